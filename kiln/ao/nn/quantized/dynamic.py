"""Dynamically quantized modules (torch.ao.nn.quantized.dynamic): int8 weights, float
activations quantized afresh on every call from their own min and max, float outputs."""

from __future__ import annotations

import kiln
from kiln.ao.nn.quantized import kernels
from kiln.ao.nn.quantized.modules import Linear as _QuantizedLinear, quantize_weight

__all__ = ["Linear"]


class Linear(_QuantizedLinear):
    """nn.Linear with a qint8 weight: `y = x W^T + b` with x quantized per call (with the x86
    engine's reduce_range: activations use 7 bits), the product in integers, b added in float.
    The output equals PyTorch's to the last bit in our tests."""

    _FLOAT_NAME = "DynamicQuantizedLinear"

    def __init__(self, in_features: int, out_features: int, bias_: bool = True,
                 dtype=kiln.qint8):
        super().__init__(in_features, out_features, bias_, dtype=dtype)

    def forward(self, x):
        return kernels.linear_dynamic(x, self._weight_q, self._bias_f, reduce_range=True)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"dtype={self._weight_q.dtype}, qscheme={self._weight_q.qscheme()}")

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False) -> "Linear":
        """The dynamic module for a float nn.Linear (or LinearReLU, whose ReLU is dropped as in
        PyTorch) carrying a `qconfig`: its weight observer sees the weight once."""
        from kiln.ao.nn.intrinsic import LinearReLU
        from kiln.ao.quantization.qconfig import default_dynamic_qconfig
        if type(mod) not in (kiln.nn.Linear, LinearReLU):
            raise AssertionError(f"nn.quantized.dynamic.Linear.from_float only works for "
                                 f"Linear and LinearReLU, got {type(mod).__name__}")
        if not hasattr(mod, "qconfig"):
            raise AssertionError("Input float module must have qconfig defined")
        if type(mod) is LinearReLU:
            mod = mod[0]
        qconfig = mod.qconfig if mod.qconfig is not None and mod.qconfig.weight is not None \
            else default_dynamic_qconfig
        observer = qconfig.weight()
        if observer.dtype is not kiln.qint8:
            raise NotImplementedError(f"kiln's dynamic Linear quantizes weights to qint8 only, "
                                      f"got {observer.dtype} (float16 is not in kiln)")
        observer(mod.weight)
        out = cls(mod.in_features, mod.out_features, dtype=kiln.qint8)
        out.set_weight_bias(quantize_weight(mod.weight.detach().float(), observer), mod.bias)
        return out
