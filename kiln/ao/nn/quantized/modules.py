"""Statically quantized modules (torch.ao.nn.quantized): quantized tensors in, quantized
tensors out, computed in integers with PyTorch's x86 (FBGEMM) requantization; `from_float`
builds each from a float module that `prepare` equipped with observers."""

from __future__ import annotations

import kiln
from kiln import nn
from kiln.ao.nn.quantized import kernels
from kiln.tracer import quantized as _q

__all__ = ["Linear", "Conv2d", "Quantize", "DeQuantize", "FloatFunctional", "QFunctional",
           "quantize_weight"]


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


class _OutputQParams(nn.Module):
    """A module whose output has a `scale` and `zero_point` (floats on the module): in its
    state_dict as tensors under PyTorch's keys, read back by load_state_dict."""

    _QPARAMS_SHAPE: tuple = ()      # Quantize keeps them as 1-element tensors, as PyTorch

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        shape = self._QPARAMS_SHAPE
        destination[prefix + "scale"] = kiln.full(shape, float(self.scale), dtype=kiln.float32)
        destination[prefix + "zero_point"] = kiln.full(shape, int(self.zero_point),
                                                       dtype=kiln.int64)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, missing: list,
                              errors: list, assign: bool) -> None:
        super()._load_from_state_dict(state_dict, prefix, missing, errors, assign)
        keys = [prefix + "scale", prefix + "zero_point"]
        absent = [k for k in keys if k not in state_dict]
        if absent:
            missing.extend(absent)
            return
        self.scale = float(state_dict[keys[0]])
        self.zero_point = int(state_dict[keys[1]])


class _WeightBias(_OutputQParams):
    """What quantized Linear and Conv2d share: a qint8 weight and a float bias, read through
    methods as in PyTorch (`m.weight()`, `m.bias()`), and their printed name."""

    _FLOAT_NAME = ""
    _RELU = False            # a fused ReLU: the output clamped at its zero point
    _PACKED = False          # state_dict holds weight and bias packed, as Linear's does

    def _get_name(self) -> str:
        return self._FLOAT_NAME

    def set_weight_bias(self, w: _q.QuantizedTensor, b) -> None:
        self._weight_q = w
        self._bias_f = None if b is None else b.detach().float().clone()

    def weight(self) -> _q.QuantizedTensor:
        return self._weight_q

    def bias(self):
        return self._bias_f

    # state_dict under PyTorch's keys: Conv2d's `weight` and `bias` before its output
    # parameters, Linear's packed as `_packed_params._packed_params` after them
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        if not self._PACKED:
            destination[prefix + "weight"] = self._weight_q
            destination[prefix + "bias"] = self._bias_f
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._PACKED:
            destination[prefix + "_packed_params.dtype"] = self._weight_q.dtype
            destination[prefix + "_packed_params._packed_params"] = (self._weight_q,
                                                                     self._bias_f)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, missing: list,
                              errors: list, assign: bool) -> None:
        super()._load_from_state_dict(state_dict, prefix, missing, errors, assign)
        keys = [prefix + k for k in (["_packed_params._packed_params"] if self._PACKED
                                     else ["weight", "bias"])]
        absent = [k for k in keys if k not in state_dict]
        if absent:
            missing.extend(absent)
            return
        weight, bias = state_dict[keys[0]] if self._PACKED else (state_dict[keys[0]],
                                                                 state_dict[keys[1]])
        if not isinstance(weight, _q.QuantizedTensor) or \
                tuple(weight.shape) != tuple(self._weight_q.shape):
            got = _q._describe([weight]) + f" of shape {tuple(weight.shape)}" \
                if isinstance(weight, kiln.Tensor) else f"a {type(weight).__name__}"
            errors.append(f"While copying the weight of {self._get_name()} {keys[0]!r}: "
                          f"expected a quantized tensor of shape "
                          f"{tuple(self._weight_q.shape)}, got {got}")
            return
        self.set_weight_bias(weight, bias)


class Linear(_WeightBias):
    """A quantized nn.Linear: quint8 input, qint8 weight, float bias, quint8 output with the
    module's `scale` and `zero_point`."""

    _FLOAT_NAME = "QuantizedLinear"
    _FROM = (nn.Linear,)

    _PACKED = True

    def __init__(self, in_features: int, out_features: int, bias_: bool = True,
                 dtype=kiln.qint8):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scale, self.zero_point = 1.0, 0
        weight = kiln.quantize_per_tensor(kiln.zeros(out_features, in_features), 1.0, 0,
                                          kiln.qint8)
        self.set_weight_bias(weight, kiln.zeros(out_features) if bias_ else None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scale={self.scale}, zero_point={self.zero_point}, "
                f"qscheme={self._weight_q.qscheme()}")

    def forward(self, x):
        return kernels.linear(x, self._weight_q, self._bias_f, self.scale, self.zero_point,
                              relu=self._RELU)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False):
        """The quantized module for an observed float Linear (or LinearReLU): the weight
        quantized by the qconfig's weight observer, the output parameters from the module's
        activation observer."""
        observer, mod = _observed(mod, cls)
        out = cls(mod.in_features, mod.out_features, dtype=kiln.qint8)
        out.set_weight_bias(_quantized_weight(mod), mod.bias)
        out.scale, out.zero_point = _output_qparams(observer)
        return out


def _observed(mod, cls) -> tuple:
    """(the output observer, the float module holding the weight) of an observed float module
    that `convert` swaps for `cls`."""
    if type(mod) not in cls._FROM:
        raise AssertionError(f"{cls.__name__}.from_float only works for "
                             f"{[k.__name__ for k in cls._FROM]}, got {type(mod).__name__}")
    if not hasattr(mod, "qconfig"):
        raise AssertionError("Input float module must have qconfig defined")
    if not hasattr(mod, "activation_post_process"):
        raise AssertionError("Input float module must have observer attached (run prepare "
                             "and calibrate before convert)")
    observer = mod.activation_post_process
    return observer, (mod[0] if isinstance(mod, nn.Sequential) else mod)


def _quantized_weight(mod) -> _q.QuantizedTensor:
    observer = mod.qconfig.weight()
    if observer.dtype is not kiln.qint8:
        raise AssertionError(f"Weight observer must have dtype torch.qint8, got "
                             f"{observer.dtype}")
    observer(mod.weight)
    return quantize_weight(mod.weight.detach().float(), observer)


def _output_qparams(observer) -> tuple:
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point)


class Conv2d(_WeightBias):
    """A quantized nn.Conv2d (zero padding): quint8 NCHW input, qint8 weight, float bias,
    quint8 output with the module's `scale` and `zero_point`."""

    _FLOAT_NAME = "QuantizedConv2d"
    _FROM = (nn.Conv2d,)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None):
        super().__init__()
        if padding_mode != "zeros" or isinstance(padding, str):
            raise NotImplementedError(f"quantized Conv2d: kiln has zero padding given as "
                                      f"numbers only, got padding={padding!r}, padding_mode="
                                      f"{padding_mode!r}")
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        self.padding_mode = padding_mode
        self.scale, self.zero_point = 1.0, 0
        weight = kiln.quantize_per_tensor(
            kiln.zeros(out_channels, in_channels // groups, *self.kernel_size), 1.0, 0,
            kiln.qint8)
        self.set_weight_bias(weight, kiln.zeros(out_channels) if bias else None)

    def forward(self, x):
        return kernels.conv2d(x, self._weight_q, self._bias_f, self.stride, self.padding,
                              self.dilation, self.groups, self.scale, self.zero_point,
                              relu=self._RELU)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, scale={self.scale}, zero_point={self.zero_point}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self._bias_f is None:
            text += ", bias=False"
        return text

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False):
        """The quantized module for an observed float Conv2d (or ConvReLU2d)."""
        observer, mod = _observed(mod, cls)
        out = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                  mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode)
        out.set_weight_bias(_quantized_weight(mod), mod.bias)
        out.scale, out.zero_point = _output_qparams(observer)
        return out


class Quantize(_OutputQParams):
    """QuantStub's converted form: a float tensor to quint8 with fixed parameters."""

    _QPARAMS_SHAPE = (1,)

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



class FloatFunctional(nn.Module):
    """Tensor arithmetic as a module, so that prepare can observe its result: `self.add(x, y)`
    in a float model becomes a quantized add after convert. The scalar forms are not observed
    (as in PyTorch)."""

    def __init__(self):
        super().__init__()
        self.activation_post_process = nn.Identity()

    def forward(self, x):
        raise RuntimeError("FloatFunctional is not intended to use the 'forward'. Please use "
                           "the underlying operation")

    def add(self, x, y):
        return self.activation_post_process(kiln.add(x, y))

    def add_scalar(self, x, y):
        return kiln.add(x, y)

    def mul(self, x, y):
        return self.activation_post_process(kiln.mul(x, y))

    def mul_scalar(self, x, y):
        return kiln.mul(x, y)

    def cat(self, x, dim: int = 0):
        return self.activation_post_process(kiln.cat(x, dim=dim))

    def add_relu(self, x, y):
        return self.activation_post_process(kiln.relu(kiln.add(x, y)))

    def matmul(self, x, y):
        return self.activation_post_process(kiln.matmul(x, y))


class QFunctional(_OutputQParams):
    """FloatFunctional's converted form: add, add_relu, mul and cat of quantized tensors into
    the observed scale and zero point."""

    def __init__(self):
        super().__init__()
        self.scale, self.zero_point = 1.0, 0
        self.activation_post_process = nn.Identity()

    def _get_name(self) -> str:
        return "QFunctional"

    def extra_repr(self) -> str:
        return f"scale={self.scale}, zero_point={self.zero_point}"

    def forward(self, x):
        raise RuntimeError("Functional is not intended to use the 'forward'. Please use the "
                           "underlying operation")

    def add(self, x, y):
        return kernels.add(x, y, self.scale, self.zero_point, relu=False)

    def add_relu(self, x, y):
        return kernels.add(x, y, self.scale, self.zero_point, relu=True)

    def mul(self, x, y):
        return kernels.mul(x, y, self.scale, self.zero_point)

    def cat(self, x, dim: int = 0):
        return kernels.cat(x, dim, self.scale, self.zero_point)

    def _not_in_kiln(self, name: str):
        raise NotImplementedError(f"QFunctional.{name}: kiln has no quantized {name} (its "
                                  "output parameters are not observed); dequantize first")

    def add_scalar(self, x, y):
        self._not_in_kiln("add_scalar")

    def mul_scalar(self, x, y):
        self._not_in_kiln("mul_scalar")

    def matmul(self, x, y):
        self._not_in_kiln("matmul")

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False) -> "QFunctional":
        if type(mod) is not FloatFunctional:
            raise AssertionError(f"QFunctional.from_float expects FloatFunctional, got "
                                 f"{type(mod).__name__}")
        out = cls()
        out.scale, out.zero_point = _output_qparams(mod.activation_post_process)
        return out
