"""Observers and qconfigs against torch.ao.quantization: the statistics they keep and the
scale / zero point they compute, bit for bit."""

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq

import kiln
import kiln.ao.quantization as kq


def _batches(seed: int, shape=(4, 3, 5, 5)) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * rng.uniform(0.1, 4) + rng.uniform(-2, 2))
            .astype(np.float32) for _ in range(4)]


def _same_qparams(ours, theirs) -> None:
    scale, zero_point = ours.calculate_qparams()
    ref_scale, ref_zero_point = theirs.calculate_qparams()
    assert scale.dtype.name == str(ref_scale.dtype)[6:]
    assert zero_point.dtype.name == str(ref_zero_point.dtype)[6:]
    np.testing.assert_array_equal(scale.numpy(), ref_scale.numpy())
    np.testing.assert_array_equal(zero_point.numpy(), ref_zero_point.numpy())
    assert (ours.quant_min, ours.quant_max) == (theirs.quant_min, theirs.quant_max)


PER_TENSOR = [
    dict(), dict(dtype="qint8"), dict(reduce_range=True), dict(quant_min=0, quant_max=127),
    dict(dtype="qint8", qscheme="per_tensor_symmetric"),
    dict(dtype="quint8", qscheme="per_tensor_symmetric"),
    dict(dtype="qint8", qscheme="per_tensor_symmetric", quant_min=-127, quant_max=127,
         eps=2 ** -12),
    dict(dtype="qint8", reduce_range=True)]


def _kwargs(module, spec: dict) -> dict:
    out = dict(spec)
    for key in ("dtype", "qscheme"):
        if key in out:
            out[key] = getattr(module, out[key])
    return out


@pytest.mark.filterwarnings("ignore:Please use quant_min")
@pytest.mark.parametrize("spec", PER_TENSOR)
@pytest.mark.parametrize("name", ["MinMaxObserver", "MovingAverageMinMaxObserver"])
def test_per_tensor_observers_match_torch(name, spec):
    ours = getattr(kq, name)(**_kwargs(kiln, spec))
    theirs = getattr(tq, name)(**_kwargs(torch, spec))
    for x in _batches(len(spec)):
        out = ours(kiln.tensor(x))
        theirs(torch.tensor(x))
        assert np.array_equal(out.numpy(), x)            # observers pass values through
        np.testing.assert_array_equal(ours.min_val.numpy(), theirs.min_val.numpy())
        np.testing.assert_array_equal(ours.max_val.numpy(), theirs.max_val.numpy())
        _same_qparams(ours, theirs)


@pytest.mark.parametrize("spec", [
    dict(), dict(ch_axis=1), dict(dtype="qint8", qscheme="per_channel_symmetric"),
    dict(dtype="qint8", qscheme="per_channel_symmetric", ch_axis=1, quant_min=-127,
         quant_max=127, eps=2 ** -12),
    dict(qscheme="per_channel_affine_float_qparams")])
@pytest.mark.parametrize("name", ["PerChannelMinMaxObserver",
                                  "MovingAveragePerChannelMinMaxObserver"])
def test_per_channel_observers_match_torch(name, spec):
    ours = getattr(kq, name)(**_kwargs(kiln, spec))
    theirs = getattr(tq, name)(**_kwargs(torch, spec))
    for x in _batches(7):
        ours(kiln.tensor(x))
        theirs(torch.tensor(x))
        np.testing.assert_array_equal(ours.min_val.numpy(), theirs.min_val.numpy())
        np.testing.assert_array_equal(ours.max_val.numpy(), theirs.max_val.numpy())
    scale, zero_point = ours.calculate_qparams()
    ref_scale, ref_zero_point = theirs.calculate_qparams()
    assert zero_point.dtype.name == str(ref_zero_point.dtype)[6:]
    np.testing.assert_array_equal(scale.numpy(), ref_scale.numpy())
    np.testing.assert_array_equal(zero_point.numpy(), ref_zero_point.numpy())


def test_default_observers_and_qconfigs_match_torch():
    x = _batches(3)[0]
    for name in ("default_observer", "default_weight_observer",
                 "default_per_channel_weight_observer", "weight_observer_range_neg_127_to_127",
                 "per_channel_weight_observer_range_neg_127_to_127"):
        ours, theirs = getattr(kq, name)(), getattr(tq, name)()
        ours(kiln.tensor(x))
        theirs(torch.tensor(x))
        _same_qparams(ours, theirs)
    for name in ("default_qconfig", "default_per_channel_qconfig", "default_dynamic_qconfig",
                 "per_channel_dynamic_qconfig"):
        ours, theirs = getattr(kq, name), getattr(tq, name)
        for part in ("activation", "weight"):
            a, b = getattr(ours, part)(), getattr(theirs, part)()
            assert type(a).__name__ == type(b).__name__
            assert (a.dtype.name, a.qscheme.name) == (str(b.dtype)[6:], str(b.qscheme)[6:])
            assert (a.quant_min, a.quant_max) == (b.quant_min, b.quant_max)
    for backend in ("x86", "fbgemm", "qnnpack", "onednn"):
        ours, theirs = kq.get_default_qconfig(backend), tq.get_default_qconfig(backend)
        assert type(ours.weight()).__name__ == type(theirs.weight()).__name__
        assert ours.activation.p.keywords == theirs.activation.p.keywords
    assert type(kq.get_default_qconfig("x86").activation()).__name__ == "HistogramObserver"


def test_placeholder_and_unobserved_defaults():
    ours, theirs = kq.default_dynamic_quant_observer(), tq.default_dynamic_quant_observer()
    assert (ours.dtype.name, ours.is_dynamic, ours.quant_min, ours.quant_max) == (
        "quint8", theirs.is_dynamic, theirs.quant_min, theirs.quant_max)
    x = kiln.randn(3)
    assert ours(x) is x
    with pytest.warns(UserWarning, match="must run observer"):
        scale, zero_point = kq.MinMaxObserver().calculate_qparams()
    with pytest.warns(UserWarning):
        ref_scale, ref_zero_point = tq.MinMaxObserver().calculate_qparams()
    assert scale.tolist() == ref_scale.tolist() and zero_point.tolist() == ref_zero_point.tolist()


def test_observer_errors_match_torch():
    for module in (kq, tq):
        with pytest.raises(NotImplementedError):
            module.MinMaxObserver(qscheme=(kiln if module is kq else torch).per_channel_affine)
        with pytest.raises(AssertionError, match="include 0"):
            module.MinMaxObserver(quant_min=1, quant_max=10)
        with pytest.raises(ValueError, match="observer instance"):
            module.QConfig(activation=module.MinMaxObserver(), weight=module.MinMaxObserver)


def test_module_paths_as_torch():
    from kiln.ao.quantization.observer import MinMaxObserver
    from kiln.ao.quantization.qconfig import QConfig, default_qconfig
    from kiln.quantization import quantize_dynamic
    assert MinMaxObserver is kq.MinMaxObserver and QConfig is kq.QConfig
    assert default_qconfig is kq.default_qconfig and quantize_dynamic is kq.quantize_dynamic
    assert kiln.ao.quantization is kq and kiln.quantization.QuantStub is kq.QuantStub


def test_engine_is_settable_as_torch():
    assert kiln.backends.quantized.engine == torch.backends.quantized.engine == "x86"
    try:
        kiln.backends.quantized.engine = "fbgemm"
        assert kiln.backends.quantized.engine == "fbgemm"
        with pytest.raises(RuntimeError, match="not supported"):
            kiln.backends.quantized.engine = "tpu"
    finally:
        kiln.backends.quantized.engine = "x86"


@pytest.mark.parametrize("spec", [dict(), dict(reduce_range=True),
                                  dict(dtype="qint8", qscheme="per_tensor_symmetric"),
                                  dict(bins=256, quant_min=0, quant_max=127)])
@pytest.mark.parametrize("seed", range(5))
def test_histogram_observer_matches_torch(seed, spec):
    """The histogram (re-binned as batches widen the range) and the searched range's qparams,
    bit for bit, on normal, heavy-tailed and ReLU-like batches."""
    rng = np.random.default_rng(seed)
    ours = kq.HistogramObserver(**_kwargs(kiln, spec))
    theirs = tq.HistogramObserver(**_kwargs(torch, spec))
    for i in range(4):
        n = int(rng.integers(10, 4000))
        x = rng.standard_t(int(rng.integers(1, 6)), n) * rng.uniform(0.01, 3)
        x = (x + rng.uniform(-1, 1)).astype(np.float32)
        if (seed + i) % 3 == 0:
            x = np.maximum(x, 0)
        ours(kiln.tensor(x))
        theirs(torch.tensor(x))
        np.testing.assert_array_equal(ours.histogram.numpy(), theirs.histogram.numpy())
        assert ours.min_val.item() == theirs.min_val.item()
        assert ours.max_val.item() == theirs.max_val.item()
    _same_qparams(ours, theirs)


def test_histogram_observer_constant_input_and_defaults():
    ours, theirs = kq.default_histogram_observer(), tq.default_histogram_observer()
    for x in (np.full(10, 2.5, np.float32), np.linspace(-1, 3, 50).astype(np.float32)):
        ours(kiln.tensor(x))
        theirs(torch.tensor(x))
        np.testing.assert_array_equal(ours.histogram.numpy(), theirs.histogram.numpy())
    _same_qparams(ours, theirs)


def test_per_channel_observer_state_dict_loads_into_a_fresh_observer():
    """A fresh per-channel observer's min_val/max_val are empty; loading a calibrated one's
    state_dict was a size-mismatch error (torch's observer takes the saved shape)."""
    x = _batches(5, (5, 3))[0]
    calibrated = kq.PerChannelMinMaxObserver()
    calibrated(kiln.tensor(x))
    fresh = kq.PerChannelMinMaxObserver()
    fresh.load_state_dict(calibrated.state_dict())
    ref = tq.PerChannelMinMaxObserver()
    ref(torch.tensor(x))
    _same_qparams(fresh, ref)
