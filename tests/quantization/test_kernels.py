"""The quantized modules' kernels against PyTorch's (x86 engine), module by module on the same
quantized weights and inputs: Conv2d / ConvReLU2d over strides, padding, dilation and groups,
Linear / LinearReLU per tensor and per channel; the integers must be equal."""

import numpy as np
import pytest
import torch
import torch.ao.nn.intrinsic.quantized as tnniq
import torch.ao.nn.quantized as tnnq

import kiln
import kiln.ao.nn.intrinsic.quantized as knniq
import kiln.ao.nn.quantized as knnq

pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions")


def _weights(rng, shape, per_channel: bool):
    w = (rng.standard_normal(shape) * 0.3).astype(np.float32)
    if per_channel:
        scales = np.exp(rng.uniform(-6, -3, shape[0]))
        zps = np.zeros(shape[0], np.int64)
        return (torch.quantize_per_channel(torch.tensor(w), torch.tensor(scales),
                                           torch.tensor(zps), 0, torch.qint8),
                kiln.quantize_per_channel(kiln.tensor(w), kiln.tensor(scales), kiln.tensor(zps),
                                          0, kiln.qint8))
    scale = float(np.exp(rng.uniform(-6, -3)))
    return (torch.quantize_per_tensor(torch.tensor(w), scale, 0, torch.qint8),
            kiln.quantize_per_tensor(kiln.tensor(w), scale, 0, kiln.qint8))


def _input(rng, shape, quant_max=255):
    x = rng.standard_normal(shape).astype(np.float32)
    scale, zero_point = float(np.exp(rng.uniform(-5, -1))), int(rng.integers(0, 128))
    # values quantized to 0..quant_max (the ends clamp as the quantization does)
    x = np.clip(x, -zero_point * scale, (quant_max - zero_point) * scale)
    return (torch.quantize_per_tensor(torch.tensor(x), scale, zero_point, torch.quint8),
            kiln.quantize_per_tensor(kiln.tensor(x), scale, zero_point, kiln.quint8))


def _set(module, w, bias, scale, zero_point):
    module.set_weight_bias(w, bias)
    module.scale, module.zero_point = scale, zero_point
    return module


CONVS = [dict(), dict(stride=2), dict(padding=1), dict(padding=(2, 1), stride=(1, 2)),
         dict(dilation=2, padding=2), dict(groups=2), dict(groups=4, padding=1)]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("options", CONVS)
def test_quantized_conv2d_matches_torch(options, bias, relu):
    rng = np.random.default_rng(len(CONVS) * bias + relu)
    groups = options.get("groups", 1)
    cin, cout, k = 4, 8, 3
    tw, kw = _weights(rng, (cout, cin // groups, k, k), per_channel=not bias)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    scale, zero_point = float(np.exp(rng.uniform(-4, 0))), int(rng.integers(0, 255))
    ref_cls, our_cls = (tnniq.ConvReLU2d, knniq.ConvReLU2d) if relu else (tnnq.Conv2d,
                                                                          knnq.Conv2d)
    ref = _set(ref_cls(cin, cout, k, bias=bias, **options), tw,
               None if b is None else torch.tensor(b), scale, zero_point)
    ours = _set(our_cls(cin, cout, k, bias=bias, **options), kw,
                None if b is None else kiln.tensor(b), scale, zero_point)
    # activations of 0..127, as torch's x86 observers make them (reduce_range): with all of
    # 0..255 torch's x86 kernels sum pairs of products in saturating int16 on CPUs without
    # VNNI (vpmaddubsw), a few steps off there, which kiln's exact sums are not
    tx, kx = _input(rng, (2, cin, 9, 7), quant_max=127)
    expected, out = ref(tx), ours(kx)
    np.testing.assert_array_equal(out.int_repr().numpy(), expected.int_repr().numpy())
    assert (out.q_scale(), out.q_zero_point()) == (expected.q_scale(), expected.q_zero_point())
    assert repr(ours).replace("kiln.", "torch.") == repr(ref)


@pytest.mark.parametrize("options", CONVS[:3])
def test_quantized_conv2d_of_full_range_activations_is_the_exact_result(options):
    """Activations over all of 0..255: the convolution of the dequantized values in float64,
    requantized, to the step (torch's x86 kernels are too on CPUs with VNNI)."""
    rng = np.random.default_rng(7)
    cin, cout, k = 4, 8, 3
    _, kw = _weights(rng, (cout, cin, k, k), per_channel=True)
    scale, zero_point = float(np.exp(rng.uniform(-4, 0))), int(rng.integers(0, 255))
    ours = _set(knniq.ConvReLU2d(cin, cout, k, bias=False, **options), kw, None, scale,
                zero_point)
    x_scale, x_zero = 0.05, 40
    values = (rng.integers(0, 256, (2, cin, 9, 7)) - x_zero) * x_scale
    kx = kiln.quantize_per_tensor(kiln.tensor(values.astype(np.float32)), x_scale, x_zero,
                                  kiln.quint8)
    assert kx.int_repr().numpy().max() == 255 and kx.int_repr().numpy().min() == 0
    exact = torch.nn.functional.conv2d(torch.from_numpy(kx.dequantize().numpy()).double(),
                                       torch.from_numpy(kw.dequantize().numpy()).double(),
                                       **options).relu().numpy()
    want = np.clip(np.round(exact / scale) + zero_point, 0, 255)
    got = ours(kx).int_repr().numpy().astype(np.float64)
    assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.99


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_quantized_linear_matches_torch(seed, per_channel, relu):
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(1, 90)), int(rng.integers(1, 40))
    tw, kw = _weights(rng, (n_out, n_in), per_channel)
    b = rng.standard_normal(n_out).astype(np.float32)
    scale, zero_point = float(np.exp(rng.uniform(-4, 0))), int(rng.integers(0, 255))
    ref_cls, our_cls = (tnniq.LinearReLU, knniq.LinearReLU) if relu else (tnnq.Linear,
                                                                          knnq.Linear)
    ref = _set(ref_cls(n_in, n_out), tw, torch.tensor(b), scale, zero_point)
    ours = _set(our_cls(n_in, n_out), kw, kiln.tensor(b), scale, zero_point)
    tx, kx = _input(rng, (3, 5, n_in))
    np.testing.assert_array_equal(ours(kx).int_repr().numpy(), ref(tx).int_repr().numpy())
    assert repr(ours).replace("kiln.", "torch.") == repr(ref)
