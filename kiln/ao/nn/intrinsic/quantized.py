"""torch.ao.nn.intrinsic.quantized: the quantized forms of fused modules, whose ReLU is the
requantization's lower clamp at the output zero point."""

from __future__ import annotations

from kiln.ao.nn import intrinsic as nni
from kiln.ao.nn.quantized import modules as nnq

__all__ = ["ConvReLU2d", "LinearReLU"]


class ConvReLU2d(nnq.Conv2d):
    """Quantized Conv2d with a fused ReLU."""

    _FLOAT_NAME = "QuantizedConvReLU2d"
    _FROM = (nni.ConvReLU2d,)
    _RELU = True


class LinearReLU(nnq.Linear):
    """Quantized Linear with a fused ReLU."""

    _FLOAT_NAME = "QuantizedLinearReLU"
    _FROM = (nni.LinearReLU,)
    _RELU = True
