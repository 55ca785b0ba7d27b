"""Eager-mode static post-training quantization, written as PyTorch's static quantization
tutorial does it (QuantStub/DeQuantStub, fuse_modules, qconfig, prepare, calibrate, convert,
evaluate), run by torch and by kiln on the same weights and data: the quantized models agree on
every scale, zero point and integer."""

import numpy as np
import pytest
import torch
import torch.ao.nn.quantized as tnnq
import torch.ao.quantization as tq

import kiln
import kiln.ao.nn.quantized as knnq
import kiln.ao.quantization as kq

pytestmark = [pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions"),
              pytest.mark.filterwarnings("ignore:.*torch.ao.quantization is deprecated"),
              pytest.mark.filterwarnings("ignore:Please use quant_min")]


def make_net(nn, quantization, functional):
    """The tutorial's model shape: stubs around conv-bn-relu blocks, a residual add through
    FloatFunctional, a flatten and two linear layers."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = quantization.QuantStub()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(8)
            self.skip_add = functional.FloatFunctional()
            self.conv3 = nn.Conv2d(8, 12, 3, stride=2, groups=4)
            self.relu3 = nn.ReLU()
            self.fc1 = nn.Linear(12 * 3 * 3, 32)
            self.relu4 = nn.ReLU()
            self.fc2 = nn.Linear(32, 10)
            self.dequant = quantization.DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            x = self.relu1(self.bn1(self.conv1(x)))
            x = self.skip_add.add(x, self.bn2(self.conv2(x)))
            x = self.relu3(self.conv3(x))
            x = x.flatten(1)
            x = self.relu4(self.fc1(x))
            return self.dequant(self.fc2(x))

    return Net()


FUSE = [["conv1", "bn1", "relu1"], ["conv2", "bn2"], ["conv3", "relu3"], ["fc1", "relu4"]]


def _twins(seed: int):
    torch.manual_seed(seed)
    ref = make_net(torch.nn, tq, tnnq)
    with torch.no_grad():                 # trained-looking batch-norm statistics
        for bn in (ref.bn1, ref.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    ours = make_net(kiln.nn, kq, knnq)
    ours.load_state_dict({k: kiln.tensor(v.detach().numpy()) for k, v in
                          ref.state_dict().items()})
    return ref.eval(), ours.eval()


def _qconfigs(kind: str):
    if kind == "x86":                          # what the tutorial uses
        return tq.get_default_qconfig("x86"), kq.get_default_qconfig("x86")
    if kind == "per_channel_reduce_range":     # get_default_qconfig("x86") with MinMax
        return (tq.QConfig(activation=tq.MinMaxObserver.with_args(reduce_range=True),
                           weight=tq.default_per_channel_weight_observer),
                kq.QConfig(activation=kq.MinMaxObserver.with_args(reduce_range=True),
                           weight=kq.default_per_channel_weight_observer))
    if kind == "moving_average":
        # activations reduced to 0..127 as torch advises for x86: with all of 0..255 its x86
        # kernels sum pairs of products in saturating int16 on CPUs without VNNI
        # (vpmaddubsw), a few steps off there, which kiln's exact sums are not
        return (tq.QConfig(activation=tq.MovingAverageMinMaxObserver.with_args(
                    averaging_constant=0.5, reduce_range=True),
                    weight=tq.default_weight_observer),
                kq.QConfig(activation=kq.MovingAverageMinMaxObserver.with_args(
                    averaging_constant=0.5, reduce_range=True),
                    weight=kq.default_weight_observer))
    return tq.default_qconfig, kq.default_qconfig


def _quantize_both(seed: int, kind: str, shared_statistics: bool = True):
    """Both models fused, prepared, calibrated on the same batches and converted. The float
    forward passes of calibration differ in the last bit between PyTorch's and kiln's matmul
    and convolution, and so can the later layers' observed ranges: with `shared_statistics`
    kiln's observers take torch's statistics (its state_dict) so the quantized models can be
    compared integer for integer."""
    ref, ours = _twins(seed)
    ref = tq.fuse_modules(ref, FUSE)
    ours = kq.fuse_modules(ours, FUSE)
    ref.qconfig, ours.qconfig = _qconfigs(kind)
    ref, ours = tq.prepare(ref), kq.prepare(ours)
    rng = np.random.default_rng(seed)
    for _ in range(3):                                 # calibration batches
        x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
        ref(torch.tensor(x))
        ours(kiln.tensor(x))
    if shared_statistics:
        ours.load_state_dict({k: kiln.tensor(v.numpy()) for k, v in ref.state_dict().items()})
    return tq.convert(ref), kq.convert(ours), rng


QUANTIZED = ("quant", "conv1", "conv2", "conv3", "fc1", "fc2", "skip_add")


@pytest.mark.parametrize("kind", ["x86", "default", "per_channel_reduce_range",
                                  "moving_average"])
@pytest.mark.parametrize("seed", range(3))
def test_static_quantized_cnn_matches_torch(seed, kind):
    qref, qours, rng = _quantize_both(seed, kind)
    for name in QUANTIZED:
        ours, theirs = getattr(qours, name), getattr(qref, name)
        assert ours._get_name() == theirs._get_name()
        assert (ours.scale, ours.zero_point) == (float(theirs.scale), int(theirs.zero_point))
        if hasattr(theirs, "weight"):
            np.testing.assert_array_equal(ours.weight().int_repr().numpy(),
                                          theirs.weight().int_repr().numpy())
            np.testing.assert_array_equal(ours.bias().numpy(), theirs.bias().detach().numpy())
    for _ in range(2):                                 # evaluation batches
        x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
        expected = qref(torch.tensor(x))
        out = qours(kiln.tensor(x))
        assert out.dtype is kiln.float32
        np.testing.assert_array_equal(out.numpy(), expected.numpy())
        # and every quantized intermediate, integer for integer
        xq_ref, xq = qref.quant(torch.tensor(x)), qours.quant(kiln.tensor(x))
        for layer in ("conv1", "conv2"):
            xq_ref, xq = getattr(qref, layer)(xq_ref), getattr(qours, layer)(xq)
            np.testing.assert_array_equal(xq.int_repr().numpy(), xq_ref.int_repr().numpy())


@pytest.mark.parametrize("kind", ["x86", "per_channel_reduce_range"])
@pytest.mark.parametrize("seed", range(3))
def test_static_quantization_with_own_calibration_stays_within_a_step(seed, kind):
    """kiln calibrating on its own float passes: the same zero points, scales equal to float32
    rounding, outputs equal or one output quantization step apart."""
    qref, qours, rng = _quantize_both(seed, kind, False)
    for name in QUANTIZED:
        ours, theirs = getattr(qours, name), getattr(qref, name)
        assert ours.zero_point == theirs.zero_point
        assert ours.scale == pytest.approx(float(theirs.scale), rel=1e-6)
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    out, expected = qours(kiln.tensor(x)).numpy(), qref(torch.tensor(x)).numpy()
    step = float(qref.fc2.scale)
    assert np.abs(out - expected).max() <= step * 1.0001


def test_prepared_and_converted_models_print_as_torch():
    qref, qours, _ = _quantize_both(0, "per_channel_reduce_range")
    text = repr(qref).replace("torch.", "kiln.")
    assert repr(qours) == text


def test_fuse_modules_folds_batch_norm_as_torch():
    ref, ours = _twins(1)
    fref, fours = tq.fuse_modules(ref, FUSE), kq.fuse_modules(ours, FUSE)
    assert repr(fours).replace("kiln.", "torch.") == repr(fref)
    for name, value in fref.state_dict().items():
        np.testing.assert_array_equal(fours.state_dict()[name].numpy(), value.numpy())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(fours(kiln.tensor(x)).detach().numpy(),
                               fref(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="training mode"):
        kq.fuse_modules(ours.train(), [["conv1", "bn1"]])
    with pytest.raises(NotImplementedError, match="Cannot fuse modules"):
        kq.fuse_modules(ours, [["conv1", "fc1"]])


def test_prepare_places_observers_as_torch():
    ref, ours = _twins(2)
    ref = tq.fuse_modules(ref, FUSE)
    ours = kq.fuse_modules(ours, FUSE)
    ref.qconfig, ours.qconfig = tq.default_qconfig, kq.default_qconfig
    pref, pours = tq.prepare(ref), kq.prepare(ours)
    names = sorted(n for n, _ in pref.named_modules() if n.endswith("activation_post_process"))
    assert sorted(n for n, _ in pours.named_modules()
                  if n.endswith("activation_post_process")) == names
    assert not hasattr(ours.conv1, "activation_post_process")     # prepare copied the model


@pytest.mark.parametrize("op", ["add", "add_relu", "mul", "cat"])
@pytest.mark.parametrize("seed", range(3))
def test_qfunctional_matches_torch(seed, op):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal((30, 7)).astype(np.float32) * 3 for _ in range(2))
    sa, sb, so = (float(np.exp(rng.uniform(-5, -1))) for _ in range(3))
    za, zb, zo = (int(rng.integers(0, 255)) for _ in range(3))
    qa = torch.quantize_per_tensor(torch.tensor(a), sa, za, torch.quint8)
    qb = torch.quantize_per_tensor(torch.tensor(b), sb, zb, torch.quint8)
    ka = kiln.quantize_per_tensor(kiln.tensor(a), sa, za, kiln.quint8)
    kb = kiln.quantize_per_tensor(kiln.tensor(b), sb, zb, kiln.quint8)
    f, g = tnnq.QFunctional(), knnq.QFunctional()
    f.scale, f.zero_point, g.scale, g.zero_point = so, zo, so, zo
    if op == "cat":
        expected, out = f.cat([qa, qb], 1), g.cat([ka, kb], 1)
    else:
        expected, out = getattr(f, op)(qa, qb), getattr(g, op)(ka, kb)
    np.testing.assert_array_equal(out.int_repr().numpy(), expected.int_repr().numpy())
    assert (out.q_scale(), out.q_zero_point()) == (expected.q_scale(), expected.q_zero_point())
    with pytest.raises(NotImplementedError, match="no quantized add_scalar"):
        g.add_scalar(ka, 1.0)


def test_quantized_modules_refuse_float_input():
    qref, qours, _ = _quantize_both(0, "default")
    with pytest.raises(TypeError, match="expected a quint8 per-tensor quantized input"):
        qours.conv1(kiln.randn(1, 3, 8, 8))


def test_quantization_aware_training_is_refused_clearly():
    _, ours = _twins(0)
    for name in ("prepare_qat", "quantize_qat", "fuse_modules_qat", "get_default_qat_qconfig"):
        assert callable(getattr(tq, name))          # torch has them
        with pytest.raises(NotImplementedError, match="no quantization-aware training"):
            getattr(kq, name)(ours)


def test_quantize_in_one_call_with_quant_wrapper_matches_torch():
    """quantize(model, run_fn, run_args) on a QuantWrapper, qconfig by submodule name."""
    torch.manual_seed(3)
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    ours = kiln.nn.Sequential(kiln.nn.Linear(6, 5), kiln.nn.ReLU(), kiln.nn.Linear(5, 3))
    ours.load_state_dict({k: kiln.tensor(v.detach().numpy()) for k, v in
                          ref.state_dict().items()})
    ref, ours = tq.QuantWrapper(ref.eval()), kq.QuantWrapper(ours.eval())
    ref.qconfig, ours.qconfig = tq.default_qconfig, kq.default_qconfig
    ref.module[2].qconfig, ours.module[2].qconfig = None, None      # the last layer stays float
    data = np.random.default_rng(0).standard_normal((4, 8, 6)).astype(np.float32)

    def calibrate(model, batches):
        for x in batches:
            model(x)

    qref = tq.quantize(ref, calibrate, [[torch.tensor(x) for x in data]])
    qours = kq.quantize(ours, calibrate, [[kiln.tensor(x) for x in data]])
    # the first Linear's output range comes from a float matmul, which may differ from
    # torch's in the last bit: its scale is compared to float32 rounding
    names = [m._get_name() for m in qref.modules() if m._get_name() != "LinearPackedParams"]
    assert [m._get_name() for m in qours.modules()] == names
    assert qours.module[0].scale == pytest.approx(float(qref.module[0].scale), rel=1e-6)
    assert qours.module[0].zero_point == qref.module[0].zero_point
    x = data[0] * 1.5
    np.testing.assert_array_equal(qours.quant(kiln.tensor(x)).int_repr().numpy(),
                                  qref.quant(torch.tensor(x)).int_repr().numpy())
    np.testing.assert_array_equal(qours.module[0].weight().int_repr().numpy(),
                                  qref.module[0].weight().int_repr().numpy())
    assert type(qours.module[2]) is kiln.nn.Linear          # qconfig None: left float
    assert not hasattr(qours.module[0], "qconfig")          # convert removed the qconfigs


def test_static_quantized_state_dict_saves_and_loads_as_torch(tmp_path):
    """A converted model's state_dict has PyTorch's keys (Conv2d's `weight`/`bias`, Linear's
    `_packed_params`, each layer's output `scale`/`zero_point`); saved with kiln.save and loaded
    into a model converted from other weights, it gives torch's outputs integer for integer."""
    qref, qours, rng = _quantize_both(0, "per_channel_reduce_range")
    assert list(qours.state_dict()) == list(qref.state_dict())
    kiln.save(qours.state_dict(), tmp_path / "static.pt")
    _, other, _ = _quantize_both(1, "per_channel_reduce_range")
    other.load_state_dict(kiln.load(tmp_path / "static.pt"))
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(other(kiln.tensor(x)).numpy(),
                                  qref(torch.tensor(x)).numpy())
