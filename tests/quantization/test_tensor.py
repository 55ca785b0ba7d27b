"""Quantized tensors against PyTorch's x86 CPU kernels: the stored integers, the dequantized
values, the parameters, printing, movement, errors, and fake quantization with its gradient."""

import numpy as np
import pytest
import torch

import kiln

pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions")

DTYPES = [("quint8", 0, 255), ("qint8", -128, 127), ("qint32", -1000, 1000)]


def _inputs(seed: int, n: int, scale: float) -> np.ndarray:
    """Normal values spanning past the integer range, a quarter of them exact rounding ties."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * scale * 60).astype(np.float32)
    k = rng.integers(-300, 300, n // 4)
    x[:n // 4] = ((k + 0.5) * np.float32(scale)).astype(np.float32)
    return x


def _same_quantized(q: kiln.Tensor, ref: torch.Tensor) -> None:
    assert q.dtype is getattr(kiln, str(ref.dtype).split(".")[1])
    assert tuple(q.shape) == tuple(ref.shape)
    np.testing.assert_array_equal(q.int_repr().numpy(), ref.int_repr().numpy())
    assert q.int_repr().dtype is getattr(kiln, str(ref.int_repr().dtype).split(".")[1])
    np.testing.assert_array_equal(q.dequantize().numpy(), ref.dequantize().numpy())
    np.testing.assert_array_equal(kiln.dequantize(q).numpy(), torch.dequantize(ref).numpy())


@pytest.mark.parametrize("name,lo,hi", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_quantize_per_tensor_matches_torch_bit_for_bit(name, lo, hi, seed):
    rng = np.random.default_rng(100 + seed)
    scale = float(np.exp(rng.uniform(-6, 0)))
    zero_point = int(rng.integers(lo, hi))
    x = _inputs(seed, int(rng.integers(1, 3000)), scale)
    q = kiln.quantize_per_tensor(kiln.tensor(x), scale, zero_point, getattr(kiln, name))
    ref = torch.quantize_per_tensor(torch.tensor(x), scale, zero_point, getattr(torch, name))
    _same_quantized(q, ref)
    assert q.q_scale() == ref.q_scale() and q.q_zero_point() == ref.q_zero_point()
    assert type(q.q_scale()) is float and type(q.q_zero_point()) is int
    assert q.qscheme() is kiln.per_tensor_affine and repr(q.qscheme()) == "kiln.per_tensor_affine"


def test_tensor_scale_and_zero_point_are_read_as_torch_reads_them():
    x = _inputs(3, 100, 0.1)
    q = kiln.quantize_per_tensor(kiln.tensor(x), kiln.tensor(0.1), kiln.tensor(3), kiln.qint8)
    ref = torch.quantize_per_tensor(torch.tensor(x), torch.tensor(0.1), torch.tensor(3),
                                    torch.qint8)
    _same_quantized(q, ref)
    assert q.q_scale() == ref.q_scale()


@pytest.mark.parametrize("name,lo,hi", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_quantize_per_channel_matches_torch_bit_for_bit(name, lo, hi, axis):
    rng = np.random.default_rng(7)
    x = _inputs(axis + 5, 6 * 40 * 5, 0.02).reshape(6, 40, 5)
    n = x.shape[axis]
    scales = np.exp(rng.uniform(-6, 0, n))
    zps = rng.integers(lo, hi, n)
    q = kiln.quantize_per_channel(kiln.tensor(x), kiln.tensor(scales), kiln.tensor(zps), axis,
                                  getattr(kiln, name))
    ref = torch.quantize_per_channel(torch.tensor(x), torch.tensor(scales), torch.tensor(zps),
                                     axis, getattr(torch, name))
    _same_quantized(q, ref)
    np.testing.assert_array_equal(q.q_per_channel_scales().numpy(),
                                  ref.q_per_channel_scales().numpy())
    assert q.q_per_channel_scales().dtype is kiln.float64
    np.testing.assert_array_equal(q.q_per_channel_zero_points().numpy(),
                                  ref.q_per_channel_zero_points().numpy())
    assert q.q_per_channel_axis() == ref.q_per_channel_axis()
    assert q.qscheme() is kiln.per_channel_affine


def test_printing_matches_torch():
    x = torch.tensor([[0.9773, 1.1569, -0.3807], [1.2525, -0.3068, -1.4705]])
    q = torch.quantize_per_tensor(x, 0.05, 10, torch.quint8)
    qk = kiln.quantize_per_tensor(kiln.tensor(x.numpy()), 0.05, 10, kiln.quint8)
    assert repr(qk) == repr(q).replace("torch.", "kiln.")
    scales, zps = torch.tensor([0.1, 0.2], dtype=torch.float64), torch.tensor([0, 1])
    qc = torch.quantize_per_channel(x, scales, zps, 0, torch.qint8)
    qck = kiln.quantize_per_channel(kiln.tensor(x.numpy()), kiln.tensor(scales.numpy()),
                                    kiln.tensor(zps.numpy()), 0, kiln.qint8)
    assert repr(qck) == repr(qc).replace("torch.", "kiln.")


@pytest.mark.parametrize("move", [
    lambda t: t.reshape(4, 6), lambda t: t.view(-1), lambda t: t.flatten(1),
    lambda t: t.permute(2, 0, 1), lambda t: t.transpose(0, 1), lambda t: t.unsqueeze(1),
    lambda t: t[1], lambda t: t[:, 1:], lambda t: t.clone(), lambda t: t.detach(),
    lambda t: t.contiguous(), lambda t: t.reshape(1, 24).squeeze(0),
    lambda t: t.expand(2, 2, 3, 4),
    lambda t: (torch if isinstance(t, torch.Tensor) else kiln).flatten(t, 1),
    lambda t: (torch if isinstance(t, torch.Tensor) else kiln).cat([t, t], 1),
    lambda t: (torch if isinstance(t, torch.Tensor) else kiln).relu(t),
    lambda t: (torch.nn if isinstance(t, torch.Tensor) else kiln.nn).ReLU()(t),
    lambda t: (torch.nn if isinstance(t, torch.Tensor) else kiln.nn).ReLU(inplace=True)(t),
    lambda t: (torch.nn if isinstance(t, torch.Tensor) else kiln.nn).Flatten()(t)])
def test_movement_keeps_integers_and_parameters(move):
    x = _inputs(1, 24, 0.05).reshape(2, 3, 4)
    q = move(kiln.quantize_per_tensor(kiln.tensor(x), 0.05, 10, kiln.quint8))
    ref = move(torch.quantize_per_tensor(torch.tensor(x), 0.05, 10, torch.quint8))
    _same_quantized(q, ref)
    assert (q.q_scale(), q.q_zero_point()) == (ref.q_scale(), ref.q_zero_point())
    assert q.stride() == ref.stride()


def test_metadata_as_torch():
    x = torch.randn(2, 3, 4)
    q = torch.quantize_per_tensor(x, 0.05, 10, torch.quint8)
    qk = kiln.quantize_per_tensor(kiln.tensor(x.numpy()), 0.05, 10, kiln.quint8)
    assert qk.is_quantized and not kiln.tensor(x.numpy()).is_quantized
    assert isinstance(qk, kiln.Tensor) and not qk.requires_grad and qk.is_leaf
    for what in ("element_size", "stride", "dim", "numel"):
        assert getattr(qk, what)() == getattr(q, what)()
    assert len(qk) == len(q) and qk.device.type == "cpu" and qk.cpu() is qk
    assert qk.dtype.is_floating_point == q.dtype.is_floating_point
    assert qk.dtype.itemsize == q.dtype.itemsize
    plain = kiln.tensor(x.numpy())
    assert plain.dequantize() is plain and x.dequantize() is x


def test_errors_are_clear():
    qk = kiln.quantize_per_tensor(kiln.randn(2, 3), 0.05, 10, kiln.quint8)
    with pytest.raises(NotImplementedError, match="add: not supported on a quantized tensor"):
        qk + 1
    with pytest.raises(NotImplementedError,
                       match="not supported on a quantized tensor.*dequantize"):
        kiln.exp(qk)
    other = kiln.quantize_per_tensor(kiln.randn(2, 3), 0.1, 10, kiln.quint8)
    with pytest.raises(NotImplementedError, match="cat: kiln runs it only on per-tensor"):
        kiln.cat([qk, other])
    with pytest.raises(NotImplementedError, match="copy_: kiln writes into a quantized"):
        qk.copy_(other)
    with pytest.raises(RuntimeError, match="only Tensors of floating point"):
        qk.requires_grad_()
    with pytest.raises(TypeError, match="int_repr"):
        qk.numpy()
    with pytest.raises(RuntimeError, match="q_per_channel_scales: expected a per-channel"):
        qk.q_per_channel_scales()
    with pytest.raises(NotImplementedError, match="int_repr: expected a quantized tensor"):
        kiln.randn(2).int_repr()
    with pytest.raises(RuntimeError, match="zero_point 300 is outside quint8's range"):
        kiln.quantize_per_tensor(kiln.randn(2), 0.1, 300, kiln.quint8)
    with pytest.raises(RuntimeError, match="float32 tensor, got kiln.float64"):
        kiln.quantize_per_tensor(kiln.randn(2, dtype=kiln.float64), 0.1, 0, kiln.quint8)
    with pytest.raises(RuntimeError, match="expected a quantized dtype"):
        kiln.quantize_per_tensor(kiln.randn(2), 0.1, 0, kiln.float32)
    with pytest.raises(RuntimeError, match="expected 2 scales"):
        kiln.quantize_per_channel(kiln.randn(2, 3), kiln.ones(3), kiln.zeros(3), 0, kiln.qint8)
    with pytest.raises(IndexError, match="axis -1 is out of range"):
        kiln.quantize_per_channel(kiln.randn(2, 3), kiln.ones(3), kiln.zeros(3), -1, kiln.qint8)
    with pytest.raises(NotImplementedError, match="CPU only"):
        kiln.quantize_per_tensor(kiln.randn(2, device="meta"), 0.1, 0, kiln.quint8)
    # each torch form refuses too
    for bad in (lambda: torch.randn(2).int_repr(),
                lambda: torch.quantize_per_tensor(torch.randn(2), 0.1, 300, torch.quint8)):
        with pytest.raises((RuntimeError, NotImplementedError)):
            bad()


@pytest.mark.parametrize("seed", range(4))
def test_fake_quantize_per_tensor_values_and_straight_through_gradient(seed):
    rng = np.random.default_rng(seed)
    scale, zp = float(np.exp(rng.uniform(-6, 0))), int(rng.integers(0, 255))
    x = _inputs(seed, 1001, scale)
    xt = torch.tensor(x, requires_grad=True)
    xk = kiln.tensor(x, requires_grad=True)
    out_t = torch.fake_quantize_per_tensor_affine(xt, scale, zp, 0, 255)
    out_k = kiln.fake_quantize_per_tensor_affine(xk, scale, zp, 0, 255)
    np.testing.assert_array_equal(out_k.detach().numpy(), out_t.detach().numpy())
    g = rng.standard_normal(x.shape).astype(np.float32)
    out_t.backward(torch.tensor(g))
    out_k.backward(kiln.tensor(g))
    np.testing.assert_array_equal(xk.grad.numpy(), xt.grad.numpy())


def test_fake_quantize_per_channel_values_and_gradient():
    rng = np.random.default_rng(0)
    x = _inputs(2, 4 * 300, 0.03).reshape(4, 300)
    scales = np.exp(rng.uniform(-6, -2, 4)).astype(np.float32)
    zps = rng.integers(-128, 127, 4).astype(np.int32)
    xt, xk = torch.tensor(x, requires_grad=True), kiln.tensor(x, requires_grad=True)
    out_t = torch.fake_quantize_per_channel_affine(xt, torch.tensor(scales), torch.tensor(zps),
                                                   0, -128, 127)
    out_k = kiln.fake_quantize_per_channel_affine(xk, kiln.tensor(scales), kiln.tensor(zps),
                                                  0, -128, 127)
    np.testing.assert_array_equal(out_k.detach().numpy(), out_t.detach().numpy())
    out_t.sum().backward()
    out_k.sum().backward()
    np.testing.assert_array_equal(xk.grad.numpy(), xt.grad.numpy())


def test_fake_quantize_with_tensor_qparams_compiles_and_follows_them():
    """QAT code passes an observer's scale and zero point as tensors; the step read them into
    Python (a graph break: the whole step ran eagerly). Compiled with no fallback, each call
    quantizes with its own qparams, values and straight-through gradients equal to torch's."""
    import warnings

    @kiln.compile(fullgraph=True)
    def step(x, scale, zp):
        per_tensor = kiln.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)
        per_channel = kiln.fake_quantize_per_channel_affine(x, scale.expand(3) * 2,
                                                            zp.expand(3), 1, -128, 127)
        return (per_tensor * per_tensor).sum() + (per_channel * x).sum()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    for scale, zp in ((0.05, 100), (0.02, 30), (0.3, 120)):
        xt = torch.tensor(x, requires_grad=True)
        st, zt = torch.tensor([scale]), torch.tensor([zp], dtype=torch.int32)
        want = ((torch.fake_quantize_per_tensor_affine(xt, st, zt, 0, 255) ** 2).sum()
                + (torch.fake_quantize_per_channel_affine(xt, st.expand(3) * 2, zt.expand(3),
                                                          1, -128, 127) * xt).sum())
        want.backward()
        xk = kiln.tensor(x, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = step(xk, kiln.tensor([scale]), kiln.tensor([zp], dtype=kiln.int32))
        got.backward()
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)
        np.testing.assert_allclose(xk.grad.numpy(), xt.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_compiled_function_reaching_a_quantized_tensor_runs_eagerly():
    @kiln.compile
    def double(q):
        return q.dequantize() * 2

    x = np.ones(3, np.float32)
    with pytest.warns(UserWarning, match="graph break.*quantized"):
        double(kiln.quantize_per_tensor(kiln.tensor(x), 0.5, 5, kiln.quint8))
    for scale in (0.1, 0.2, 0.3):        # each call computes with its own tensor
        out = double(kiln.quantize_per_tensor(kiln.tensor(x), scale, 5, kiln.quint8))
        expected = torch.quantize_per_tensor(torch.tensor(x), scale, 5, torch.quint8)
        np.testing.assert_array_equal(out.numpy(), (expected.dequantize() * 2).numpy())


def test_pickle_and_deepcopy_keep_integers_and_parameters():
    import copy
    import pickle
    x = _inputs(4, 40, 0.05).reshape(4, 10)
    for q in (kiln.quantize_per_tensor(kiln.tensor(x), 0.05, 3, kiln.qint8),
              kiln.quantize_per_channel(kiln.tensor(x), kiln.tensor(np.linspace(0.01, 0.1, 4)),
                                        kiln.tensor(np.arange(4)), 0, kiln.quint8)):
        for twin in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
            assert twin.dtype is q.dtype and twin.qscheme() is q.qscheme()
            np.testing.assert_array_equal(twin.int_repr().numpy(), q.int_repr().numpy())
            np.testing.assert_array_equal(twin.dequantize().numpy(), q.dequantize().numpy())


@pytest.mark.parametrize("seed", range(8))
def test_mean_over_trailing_dims_matches_torch(seed):
    """MobileNetV2's `x.mean([2, 3])` on a quantized feature map."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 20)), int(rng.integers(1, 70)),
             int(rng.integers(1, 70)))
    scale, zero_point = float(np.exp(rng.uniform(-5, -1))), int(rng.integers(0, 255))
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 3)).astype(np.float32)
    q = kiln.quantize_per_tensor(kiln.tensor(x), scale, zero_point, kiln.quint8)
    ref = torch.quantize_per_tensor(torch.tensor(x), scale, zero_point, torch.quint8)
    for dims, keep in (([2, 3], False), ((-1,), True), ([3, 2], True), (None, False)):
        out = q.mean() if dims is None else q.mean(dims, keep)
        expected = ref.mean() if dims is None else ref.mean(dims, keep)
        _same_quantized(out, expected)
        assert (out.q_scale(), out.q_zero_point()) == (expected.q_scale(),
                                                      expected.q_zero_point())
    with pytest.raises(NotImplementedError, match="over trailing dimensions only"):
        q.mean(1)


@pytest.mark.parametrize("name,lo,hi", DTYPES)
def test_nan_and_infinities_quantize_as_torch(name, lo, hi):
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 5 + [np.nan], np.float32)
    ours = kiln.quantize_per_tensor(kiln.tensor(x), 0.1, 3, getattr(kiln, name))
    ref = torch.quantize_per_tensor(torch.tensor(x), 0.1, 3, getattr(torch, name))
    np.testing.assert_array_equal(ours.int_repr().numpy(), ref.int_repr().numpy())
    n = x.size
    ours = kiln.quantize_per_channel(kiln.tensor(x), kiln.ones(n, dtype=kiln.float64) / 10,
                                     kiln.full((n,), 3), 0, getattr(kiln, name))
    ref = torch.quantize_per_channel(torch.tensor(x), torch.ones(n, dtype=torch.float64) / 10,
                                     torch.full((n,), 3), 0, getattr(torch, name))
    np.testing.assert_array_equal(ours.int_repr().numpy(), ref.int_repr().numpy())
