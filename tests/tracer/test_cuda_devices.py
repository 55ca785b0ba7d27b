"""cuda tensors: in-place ops and the gradients they store, and 0-d CPU tensors mixed with cuda
tensors (PyTorch treats those as scalars), eagerly and compiled. GPU-marked: on a GPU they run
on CuPy; without one tests/test_fake_cuda.py runs them under the strict fake CUDA, which refuses
NumPy-only array attributes (`flags.writeable`) as CuPy does."""

import numpy as np
import pytest
import torch

import kiln

pytestmark = pytest.mark.gpu


def _pair(values, dtype=np.float32):
    """The same values as a kiln cuda tensor and a torch CPU tensor (the reference)."""
    a = np.asarray(values, dtype=dtype)
    return kiln.tensor(a, device="cuda"), torch.tensor(a)


def _same(k, t, rtol=1e-6, atol=1e-7):
    assert k.device.type == "cuda", k.device
    assert k.dtype.name == str(t.dtype).removeprefix("torch."), (k.dtype, t.dtype)
    np.testing.assert_allclose(k.cpu().numpy(), t.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("op", ["add_", "mul_", "sub_", "div_", "clamp_", "zero_", "fill_",
                                "copy_", "setitem", "relu_", "masked_fill_"])
def test_inplace_op_on_cuda_matches_torch(op):
    k, t = _pair([[1.5, -2.0, 3.0], [0.25, 4.0, -1.0]])
    ko, to = _pair([[2.0, 0.5, -1.0], [1.0, 2.0, 3.0]])
    calls = {
        "add_": lambda x, o: x.add_(o, alpha=2), "mul_": lambda x, o: x.mul_(o),
        "sub_": lambda x, o: x.sub_(1.5), "div_": lambda x, o: x.div_(o),
        "clamp_": lambda x, o: x.clamp_(-1.0, 2.0), "zero_": lambda x, o: x.zero_(),
        "fill_": lambda x, o: x.fill_(7.0), "copy_": lambda x, o: x.copy_(o),
        "setitem": lambda x, o: x.__setitem__((slice(None), 1), o[:, 0]),
        "relu_": lambda x, o: x.relu_(), "masked_fill_": lambda x, o: x.masked_fill_(o > 1, 0.0),
    }
    view_k, view_t = k[1], t[1]                  # a view sees the write, and bumps no copy
    calls[op](k, ko)
    calls[op](t, to)
    _same(k, t)
    _same(view_k, view_t)


def test_inplace_on_an_expanded_cuda_tensor_raises_like_torch():
    k = kiln.ones(1, device="cuda").expand(3)
    t = torch.ones(1).expand(3)
    with pytest.raises(RuntimeError, match="single memory location") as ke:
        k.add_(1)
    with pytest.raises(RuntimeError, match="single memory location"):
        t.add_(1)
    assert "clone()" in str(ke.value)


def test_gradients_accumulate_and_optimizers_step_on_cuda():
    w0 = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    x0 = np.array([[1.0, 2.0], [-3.0, 0.5]], dtype=np.float32)
    kw = kiln.tensor(w0, device="cuda", requires_grad=True)
    tw = torch.tensor(w0, requires_grad=True)
    kopt, topt = kiln.optim.Adam([kw], lr=0.1), torch.optim.Adam([tw], lr=0.1)
    kx, tx = kiln.tensor(x0, device="cuda"), torch.tensor(x0)
    for _ in range(3):                 # .grad stored, accumulated (no zero_grad), then stepped
        (kx @ kw).tanh().sum().backward()
        (tx @ tw).tanh().sum().backward()
        _same(kw.grad, tw.grad, rtol=1e-5)
        kopt.step()
        topt.step()
        _same(kw.detach(), tw.detach(), rtol=1e-5)


@pytest.mark.parametrize("expr", [
    lambda a, s: a * s, lambda a, s: s * a, lambda a, s: a + s, lambda a, s: s - a,
    lambda a, s: a / s, lambda a, s: torch_or_kiln(a).where(a > 0, s, a),
    lambda a, s: torch_or_kiln(a).maximum(a, s)],
    ids=["mul", "rmul", "add", "rsub", "div", "where", "maximum"])
@pytest.mark.parametrize("a_dtype,s_dtype", [(np.float32, np.float32), (np.float32, np.float64),
                                             (np.int64, np.float64), (np.int32, np.int64)])
def test_a_0d_cpu_tensor_combines_with_a_cuda_tensor_like_torch(expr, a_dtype, s_dtype):
    a_k, a_t = _pair([[1, -2, 3], [4, 5, -6]], a_dtype)
    s = np.asarray(3, dtype=s_dtype)
    out_k, out_t = expr(a_k, kiln.tensor(s)), expr(a_t, torch.tensor(s))
    _same(out_k, out_t)


def torch_or_kiln(x):
    return kiln if isinstance(x, kiln.Tensor) else torch


def test_a_1d_cpu_tensor_with_a_cuda_tensor_raises():
    a = kiln.ones(3, device="cuda")
    for mixed in (lambda: a + kiln.ones(3), lambda: kiln.ones(3) * a,
                  lambda: kiln.tensor(2.0, device="cuda") * kiln.ones(3)):
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            mixed()


def test_a_0d_cpu_tensor_with_cuda_gets_its_gradient_on_the_cpu():
    k_s = kiln.tensor(2.0, requires_grad=True)
    t_s = torch.tensor(2.0, requires_grad=True)
    k_w, t_w = _pair([1.0, -3.0, 0.5])
    k_w.requires_grad_(True)
    t_w.requires_grad_(True)
    (k_w * k_s).exp().sum().backward()
    (t_w * t_s).exp().sum().backward()
    assert k_s.grad.device.type == "cpu"
    np.testing.assert_allclose(k_s.grad.numpy(), t_s.grad.numpy(), rtol=1e-6)
    _same(k_w.grad, t_w.grad)


def test_compiled_function_takes_a_0d_cpu_tensor_with_cuda_tensors():
    def step(w, s):
        return (w * s + 1).exp().sum()
    compiled = kiln.compile(step)
    w = kiln.tensor([0.5, -1.0, 0.25], device="cuda", requires_grad=True)
    for value in (2.0, -1.5, 0.5):             # the trace, then replays with other values
        s = kiln.tensor(value, requires_grad=True)
        w.grad = None
        out = compiled(w, s)
        out.backward()
        tw = torch.tensor([0.5, -1.0, 0.25], requires_grad=True)
        ts = torch.tensor(value, requires_grad=True)
        tout = step(tw, ts)
        tout.backward()
        assert out.device.type == "cuda" and s.grad.device.type == "cpu"
        np.testing.assert_allclose(out.item(), tout.item(), rtol=1e-5)
        np.testing.assert_allclose(s.grad.numpy(), ts.grad.numpy(), rtol=1e-5)
        _same(w.grad, tw.grad, rtol=1e-5)
    entry, = compiled.entries.values()
    assert entry.program is not None and entry.calls == 2, entry.eager_reason


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d"])
def test_convolutions_and_pools_on_cuda_match_torch(op):
    # pad and the pools' ops run their definitions (kiln.ir.ops) on CuPy, the convolution's
    # products kiln.runtime.cupy_backend's kernels: the NumPy backend's paths are for NumPy
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    w0 = rng.standard_normal((3, 4, 3, 2) if op == "conv_transpose2d" else (4, 3, 3, 2))
    kx = kiln.tensor(x0, device="cuda", requires_grad=True)
    tx = torch.tensor(x0, requires_grad=True)
    kw = kiln.tensor(w0.astype(np.float32), device="cuda", requires_grad=True)
    tw = torch.tensor(w0.astype(np.float32), requires_grad=True)
    calls = {
        "conv2d": lambda F, x, w: F.conv2d(x, w, stride=(2, 1), padding=1, dilation=(1, 2)),
        "conv_transpose2d": lambda F, x, w: F.conv_transpose2d(x, w, stride=2, padding=1),
        "max_pool2d": lambda F, x, w: F.max_pool2d(x, 3, stride=2, padding=1),
        "avg_pool2d": lambda F, x, w: F.avg_pool2d(x, 2, stride=1)}
    ko = calls[op](kiln.nn.functional, kx, kw)
    to = calls[op](torch.nn.functional, tx, tw)
    # (conv2d's implicit-GEMM kernel sums its 18 products in another order than PyTorch: a
    # float32 rounding of the terms' size, ~1e-7, where they cancel)
    _same(ko.detach(), to.detach(), rtol=1e-5, atol=1e-6)
    g = rng.standard_normal(tuple(to.shape)).astype(np.float32)
    ko.backward(kiln.tensor(g, device="cuda"))
    to.backward(torch.tensor(g))
    _same(kx.grad, tx.grad, rtol=1e-4)
    if op.startswith("conv"):
        _same(kw.grad, tw.grad, rtol=1e-4)


@pytest.mark.parametrize("draw", [
    lambda **d: kiln.rand(3, 4, **d), lambda **d: kiln.randn(5, **d),
    lambda **d: kiln.randint(0, 7, (6,), **d),
    lambda **d: kiln.nn.functional.dropout(kiln.ones(8, **d), 0.5)])
def test_random_draws_on_cuda_equal_the_cpus_and_read_nothing_back(draw, monkeypatch):
    # draws are made on the host from the generator's seed, the same numbers on every device;
    # eagerly on a GPU only the values go over (the seed went over and was read back: a wait)
    from tests import fake_cuda
    kiln.manual_seed(11)
    host = draw(device="cpu").numpy()
    reads = []
    real = fake_cuda._host_access
    monkeypatch.setattr(fake_cuda, "_host_access", lambda what: reads.append(what) or real(what))
    kiln.manual_seed(11)
    got = draw(device="cuda")
    assert got.device.type == "cuda"
    assert not [r for r in reads if "to the host" in r or "reading" in r], reads
    np.testing.assert_array_equal(got.cpu().numpy(), host)


def test_an_int_device_is_that_cuda_device_as_in_torch():
    x = kiln.arange(3.0)
    for moved in (x.to(0), x.to(0, kiln.float64), x.to(device=0), x.cuda(0)):
        assert str(moved.device) == "cuda:0"
    assert x.to(0, kiln.float64).dtype == kiln.float64
    assert x.to(0).cpu().tolist() == [0.0, 1.0, 2.0]


@pytest.mark.gpu
def test_storage_offsets_and_resize_of_cuda_views_match_torch():
    # a view's offset in its memory is CuPy's pointer minus its allocation's (the fake's
    # pointers say the same); resize_ reads that memory from the view's first element
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    for lib, device in ((kiln, "cuda"), (torch, "cpu")):
        t = lib.tensor(base, device=device)
        view = t[1:, 2:]
        assert view.storage_offset() == 8
        assert t[2].storage_offset() == 12 and t.storage_offset() == 0
    k = kiln.tensor(base, device="cuda")[1]
    r = torch.tensor(base)[1]
    k.resize_(2, 2)
    r.resize_(2, 2)
    assert k.is_cuda and k.cpu().tolist() == r.tolist() == [[6.0, 7.0], [8.0, 9.0]]


def test_packed_lstm_with_dropout_on_cuda_matches_the_cpu():
    # on cuda the layers run step by step (the CPU's whole-sequence kernel is NumPy's), which
    # once drew the dropout noise between layers for the time order instead of the batch's
    # sort order; PyTorch keeps a packed batch's sizes and the padded lengths on the CPU
    from kiln.nn.utils import rnn as krnn
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((n, 3)).astype(np.float32) for n in (4, 6, 2)]
    results = []
    for device in ("cpu", "cuda"):
        kiln.manual_seed(0)
        lstm = kiln.nn.LSTM(3, 5, num_layers=2, dropout=0.5).to(device)
        packed = krnn.pack_sequence([kiln.tensor(s, device=device) for s in seqs],
                                    enforce_sorted=False)
        assert packed.batch_sizes.device.type == "cpu"
        assert packed.sorted_indices.device.type == device
        kiln.manual_seed(1)
        out, (h, c) = lstm(packed)
        padded, lengths = krnn.pad_packed_sequence(out, batch_first=True)
        assert lengths.device.type == "cpu" and lengths.tolist() == [4, 6, 2]
        (padded.sum() + h.square().sum()).backward()
        results.append([padded.detach().cpu().numpy(), h.detach().cpu().numpy()] +
                       [p.grad.cpu().numpy() for p in lstm.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_fill_and_setitem_of_cuda_tensors_take_cpu_values_like_torch():
    # `input.fill_(word_idx)` with a CPU multinomial draw (the word language model's
    # generator) and `x[1:] = cpu_rows` copy the value over, as PyTorch's copy_ does
    k, t = _pair([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    k.fill_(kiln.tensor(7))
    t.fill_(torch.tensor(7))
    _same(k, t)
    k[0] = kiln.tensor(2.5)
    t[0] = torch.tensor(2.5)
    k[1, 1:] = kiln.tensor([8.0, 9.0])
    t[1, 1:] = torch.tensor([8.0, 9.0])
    k[kiln.tensor([0, 1], device="cuda"), 0] = kiln.tensor(-1.0)
    t[torch.tensor([0, 1]), 0] = torch.tensor(-1.0)
    _same(k, t)
    # with autograd: the value's gradient comes back to its device
    kv, tv = kiln.tensor([1.0, 2.0], requires_grad=True), torch.tensor([1.0, 2.0],
                                                                        requires_grad=True)
    kw, tw = k.clone().requires_grad_(), t.clone().requires_grad_()
    ko, to = kw * 1, tw * 1
    ko[0, 1:] = kv
    to[0, 1:] = tv
    (ko * ko).sum().backward()
    (to * to).sum().backward()
    assert kv.grad.device.type == "cpu"
    np.testing.assert_allclose(kv.grad.numpy(), tv.grad.numpy())
    _same(kw.grad, tw.grad)
    for lib, x in ((kiln, k), (torch, t)):
        with pytest.raises(RuntimeError, match="fill_ only supports 0-dimension value tensor"):
            x.fill_(lib.tensor([1.0, 2.0, 3.0]))
