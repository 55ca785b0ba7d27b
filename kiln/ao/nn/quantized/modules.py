"""Statically quantized modules (torch.ao.nn.quantized): quantized tensors in, quantized
tensors out, computed in integers with PyTorch's x86 (FBGEMM) requantization; `from_float`
builds each from a float module that `prepare` equipped with observers."""

from __future__ import annotations

import kiln
from kiln import nn
from kiln.ao.nn.quantized import kernels
from kiln.tracer import quantized as _q

__all__ = ["Linear", "Quantize", "DeQuantize", "quantize_weight"]


def quantize_weight(weight, observer) -> _q.QuantizedTensor:
    """A float weight quantized with the parameters its (already run) observer computes, its
    integers clamped to the observer's range (PyTorch's _quantize_weight)."""
    scale, zero_point = observer.calculate_qparams()
    if observer.qscheme in (_q.per_tensor_symmetric, _q.per_tensor_affine):
        q = kiln.quantize_per_tensor(weight, float(scale), int(zero_point), kiln.qint8)
    elif observer.qscheme in (_q.per_channel_symmetric, _q.per_channel_affine):
        q = kiln.quantize_per_channel(weight, scale.to(kiln.float64), zero_point.to(kiln.int64),
                                      observer.ch_axis, kiln.qint8)
    else:
        raise NotImplementedError(f"kiln quantizes weights per tensor or per channel (affine or "
                                  f"symmetric), got {observer.qscheme}")
    lo, hi = observer.quant_min, observer.quant_max
    if (lo, hi) != _q.dtype_range(q.dtype):
        q._int = q._int.clip(lo, hi)
    return q


class Linear(nn.Module):
    """A quantized nn.Linear: quint8 input, qint8 weight, float bias, quint8 output with the
    module's `scale` and `zero_point`."""

    _FLOAT_NAME = "QuantizedLinear"

    def __init__(self, in_features: int, out_features: int, bias_: bool = True,
                 dtype=kiln.qint8):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scale, self.zero_point = 1.0, 0
        weight = kiln.quantize_per_tensor(kiln.zeros(out_features, in_features), 1.0, 0,
                                          kiln.qint8)
        self.set_weight_bias(weight, kiln.zeros(out_features) if bias_ else None)

    def _get_name(self) -> str:
        return self._FLOAT_NAME

    def set_weight_bias(self, w: _q.QuantizedTensor, b) -> None:
        self._weight_q = w
        self._bias_f = None if b is None else b.detach().float().clone()

    def weight(self) -> _q.QuantizedTensor:
        return self._weight_q

    def bias(self):
        return self._bias_f

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scale={self.scale}, zero_point={self.zero_point}, "
                f"qscheme={self._weight_q.qscheme()}")


class Quantize(nn.Module):
    """QuantStub's converted form: a float tensor to quint8 with fixed parameters."""

    def __init__(self, scale: float, zero_point: int, dtype=kiln.quint8):
        super().__init__()
        self.scale, self.zero_point, self.dtype = float(scale), int(zero_point), dtype

    def forward(self, x):
        return kiln.quantize_per_tensor(x, self.scale, self.zero_point, self.dtype)

    def extra_repr(self) -> str:
        return f"scale=tensor([{self.scale:.4f}]), zero_point=tensor([{self.zero_point}]), " \
               f"dtype={self.dtype}"

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False) -> "Quantize":
        observer = mod.activation_post_process
        scale, zero_point = observer.calculate_qparams()
        return cls(float(scale), int(zero_point), observer.dtype)


class DeQuantize(nn.Module):
    """DeQuantStub's converted form: a quantized tensor back to float32."""

    def forward(self, x):
        return x.dequantize()

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False) -> "DeQuantize":
        return cls()


_unused = kernels
