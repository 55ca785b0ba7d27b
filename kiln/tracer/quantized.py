"""Quantized tensors (torch.quint8 / qint8 / qint32): integers plus the scale and zero point that
map them back to floats, `x = (q - zero_point) * scale`, per tensor or per channel.

A QuantizedTensor is a Tensor (so `isinstance(q, kiln.Tensor)` holds, as in PyTorch) whose
values live in `_int`, an integer NumPy array on the CPU, with its quantization parameters
beside it. Its `_data` is a placeholder with a shape and no elements, and its dtype is a
`QuantizedDType`: the dispatcher hands any primitive with a quantized input to
`apply_primitive` below, which runs the movement ops (reshape, view, flatten, permute,
transpose, squeeze, unsqueeze, slicing, expand, cat of equal parameters) and relu on per-tensor
quantized tensors and refuses every other op, naming it. Beside those: the methods below
(int_repr, dequantize, q_scale..., mean over trailing dims, clone, detach, copy_) and the
quantized modules of `kiln.ao.nn.quantized`. Quantized tensors never require grad, and a
function traced by `@kiln.compile` that reads one breaks off and runs eagerly.

Rounding follows PyTorch's x86 (FBGEMM) CPU kernels, checked bit for bit in
tests/quantization: per-tensor quint8/qint8 round `x * (1/scale) + zero_point` once (a fused
multiply-add) to the nearest integer, ties to even; qint32 and per-channel quantization round
`x * (1/scale)` to float32, add the zero point in float32, then round to nearest even.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import dtypes as dt
from kiln.runtime.device import CPU
from kiln.tracer.errors import op_error
from kiln.tracer.torch_function import \
    disabled_torch_function_impl as _disabled_torch_function_impl
from kiln.tracer.tensor import STATE, TRACING, Tensor, _format_array, _with_suffixes


class qscheme:
    """How a quantized tensor's parameters apply (torch.qscheme): one scale for the tensor or
    one per channel."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"kiln.{self.name}"

    def __reduce__(self):       # pickles by name: the objects stay singletons (`is` works)
        return (_qscheme_named, (self.name,))


per_tensor_affine = qscheme("per_tensor_affine")
per_channel_affine = qscheme("per_channel_affine")
per_tensor_symmetric = qscheme("per_tensor_symmetric")
per_channel_symmetric = qscheme("per_channel_symmetric")
per_channel_affine_float_qparams = qscheme("per_channel_affine_float_qparams")
_QSCHEMES = {q.name: q for q in (per_tensor_affine, per_channel_affine, per_tensor_symmetric,
                                 per_channel_symmetric, per_channel_affine_float_qparams)}


def _qscheme_named(name: str) -> qscheme:
    return _QSCHEMES[name]


QUANTIZED_DTYPES = (dt.quint8, dt.qint8, dt.qint32)


def dtype_range(dtype: dt.DType) -> tuple:
    """The integers a quantized dtype holds: (quant_min, quant_max)."""
    info = np.iinfo(dtype.np)
    return int(info.min), int(info.max)


class _NoFloatMemory:
    """The `_data` of a QuantizedTensor: a shape and dtype, and nothing an op can compute on."""

    __array_ufunc__ = None

    def __init__(self, ints: np.ndarray):
        self.shape, self.dtype, self.ndim, self.size = ints.shape, ints.dtype, ints.ndim, ints.size
        self.strides, self.itemsize, self.flags = ints.strides, ints.itemsize, ints.flags

    def __array__(self, *args, **kwargs):
        raise TypeError(f"the tensor is quantized: {_HOW}")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise TypeError(f"the tensor is quantized (no float .{name}): {_HOW}")

    def __setitem__(self, index, value):
        raise TypeError(f"the tensor is quantized: kiln does not write into it in place; {_HOW}")


_HOW = "call .dequantize() first, or use a quantized module from kiln.ao.nn.quantized"


class QuantizedTensor(Tensor):
    """A quantized tensor; make one with kiln.quantize_per_tensor / quantize_per_channel."""
    # kiln's own handling, not the __torch_function__ protocol's (as torch.nn.Parameter)
    __torch_function__ = _disabled_torch_function_impl

    # `_scales`/`_zero_points`: a float and an int (per tensor) or float64/int64 arrays (per
    # channel, along `_axis`)
    __slots__ = ("_ints", "_scales", "_zero_points", "_axis", "_qscheme")

    def __init__(self, *args, **kwargs):
        raise TypeError("make a quantized tensor with kiln.quantize_per_tensor(x, scale, "
                        "zero_point, dtype) or kiln.quantize_per_channel(...)")

    @property
    def _int(self) -> np.ndarray:
        """The stored integers. Every computation reads them here, so a function traced by
        @kiln.compile that reaches a quantized tensor breaks off and runs eagerly (compiled
        programs have no quantized types)."""
        if TRACING[0] and STATE.tracer is not None:
            STATE.tracer.graph_break("a quantized tensor's integers are read (compiled code "
                                     "has no quantized types)")
        return self._ints

    @_int.setter
    def _int(self, ints: np.ndarray) -> None:
        self._ints = ints

    # ------------------------------------------------------------------ metadata
    @property
    def is_quantized(self) -> bool:
        return True

    def qscheme(self) -> qscheme:
        return self._qscheme

    def int_repr(self) -> Tensor:
        """The stored integers, as uint8 (quint8), int8 (qint8) or int32 (qint32)."""
        return Tensor._make(self._int.copy(), _INT_DTYPE[self.dtype], CPU)

    def q_scale(self) -> float:
        self._expect_per_tensor("q_scale")
        return self._scales

    def q_zero_point(self) -> int:
        self._expect_per_tensor("q_zero_point")
        return self._zero_points

    def q_per_channel_scales(self) -> Tensor:
        self._expect_per_channel("q_per_channel_scales")
        return Tensor._make(self._scales.copy(), dt.float64, CPU)

    def q_per_channel_zero_points(self) -> Tensor:
        self._expect_per_channel("q_per_channel_zero_points")
        return Tensor._make(self._zero_points.copy(), dt.int64, CPU)

    def q_per_channel_axis(self) -> int:
        self._expect_per_channel("q_per_channel_axis")
        return self._axis

    def _expect_per_tensor(self, op: str) -> None:
        if self._axis is not None:
            raise op_error(op, f"expected a per-tensor quantized tensor, got one quantized "
                           f"{self._qscheme.name}: use q_per_channel_scales() / "
                           "q_per_channel_zero_points()")

    def _expect_per_channel(self, op: str) -> None:
        if self._axis is None:
            raise op_error(op, f"expected a per-channel quantized tensor, got one quantized "
                           f"{self._qscheme.name}: use q_scale() / q_zero_point()")

    def dequantize(self) -> Tensor:
        """The float32 values `(q - zero_point) * scale`."""
        if self._axis is None:
            q = self._int.astype(np.float32)
            out = (q - np.float32(self._zero_points)) * np.float32(self._scales)
        else:
            shape = [1] * self._int.ndim
            shape[self._axis] = -1
            # per channel PyTorch multiplies in float64 by the float64 scales, then rounds
            zp = self._zero_points.reshape(shape)
            out = (self._int - zp) * self._scales.reshape(shape)
        return Tensor._make(out.astype(np.float32, copy=False), dt.float32, CPU)

    # ------------------------------------------------------------------ autograd: never
    @property
    def requires_grad(self) -> bool:
        return False

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if value:
            raise RuntimeError(f"only Tensors of floating point dtype can require gradients "
                               f"(this one is {self.dtype.name}, quantized)")

    def requires_grad_(self, requires_grad: bool = True) -> "QuantizedTensor":
        self.requires_grad = requires_grad
        return self

    def numpy(self, *, force: bool = False):
        raise TypeError(f"Got unsupported ScalarType {self.dtype.name}: NumPy has no "
                        "quantized types; use q.int_repr().numpy() or q.dequantize().numpy()")

    def mean(self, dim=None, keepdim: bool = False, *, dtype=None) -> "QuantizedTensor":
        """The mean over trailing dimensions (MobileNetV2's `x.mean([2, 3])`), quantized back
        with this tensor's parameters, as PyTorch's inner-dimension kernel computes it: the
        integers minus the zero point summed exactly, `float32(sum) * scale / n`."""
        axes = tuple(range(self.ndim)) if dim is None else tuple(
            sorted(d % self.ndim for d in ((dim,) if isinstance(dim, int) else dim)))
        if self._axis is not None or dtype is not None or \
                axes != tuple(range(self.ndim - len(axes), self.ndim)):
            raise op_error("mean", f"kiln averages per-tensor quantized tensors over trailing "
                           f"dimensions only (got dim={dim} of a {self.ndim}-d "
                           f"{self._qscheme.name} tensor): dequantize() first",
                           NotImplementedError)
        total = (self._int.astype(np.int64) - self._zero_points).sum(axis=axes, keepdims=keepdim)
        count = int(np.prod([self.shape[a] for a in axes]))
        values = total.astype(np.float32) * np.float32(self._scales) / np.float32(count)
        lo, hi = dtype_range(self.dtype)
        ints = _round_per_tensor(np.asarray(values, np.float32), self._scales,
                                 self._zero_points, lo, hi, fused=self.dtype is not dt.qint32)
        return make(ints, self.dtype, self._scales, self._zero_points)

    # ------------------------------------------------------------------ copies
    def contiguous(self, memory_format=None):
        return self._copy(np.ascontiguousarray(self._int))

    def clone(self, *, memory_format=None):
        return self._copy(self._int.copy())

    def detach(self):
        return self._copy(self._int)

    def cpu(self):
        return self

    def to(self, *args, **kwargs):
        """Only to the CPU (kiln's quantized tensors live there); a dtype change is refused as
        in PyTorch: dequantize() gives floats."""
        for target in list(args) + list(kwargs.values()):
            if isinstance(target, dt.DType) and target is not self.dtype or \
                    str(target).startswith("cuda"):
                raise op_error("to", f"a quantized {self.dtype.name} tensor stays on the CPU in "
                               f"its dtype (got {target}); use dequantize()", NotImplementedError)
        return self

    def __deepcopy__(self, memo) -> "QuantizedTensor":
        return self.clone()

    def __reduce_ex__(self, protocol):
        """Pickles as its integers and parameters."""
        return (_rebuild, (self._ints, self.dtype, self._scales, self._zero_points, self._axis,
                           self._qscheme))

    def copy_(self, src, non_blocking: bool = False) -> "QuantizedTensor":
        """Writes another quantized tensor's integers into this one (an in-place relu's last
        step); both must have the same dtype, shape and per-tensor parameters."""
        if not (isinstance(src, QuantizedTensor) and src.dtype is self.dtype
                and src._axis is None and self._axis is None
                and (src._scales, src._zero_points) == (self._scales, self._zero_points)
                and tuple(src.shape) == tuple(self.shape)):
            raise op_error("copy_", "kiln writes into a quantized tensor only a quantized "
                           "tensor of the same dtype, shape, scale and zero point (got "
                           f"{_describe([src])} into {_describe([self])})", NotImplementedError)
        self._ints[...] = src._int
        self._version[0] += 1
        return self

    def _copy(self, ints: np.ndarray) -> "QuantizedTensor":
        out = make(ints, self.dtype, self._scales, self._zero_points, self._axis)
        out._qscheme = self._qscheme
        return out

    # ------------------------------------------------------------------ repr
    def __repr__(self) -> str:
        body = _format_array(self.dequantize()._data, dt.float32)
        extras = [f"size={tuple(self._int.shape)}", f"dtype=kiln.{self.dtype.name}",
                  f"quantization_scheme=kiln.{self._qscheme.name}"]
        if self._axis is None:
            extras += [f"scale={self._scales}", f"zero_point={self._zero_points}"]
        else:
            extras += [f"scale={self.q_per_channel_scales()!r}",
                       f"zero_point={self.q_per_channel_zero_points()!r}", f"axis={self._axis}"]
        return _with_suffixes("tensor(" + body, extras, len("tensor("))

    __str__ = __repr__


_INT_DTYPE = {dt.quint8: dt.uint8, dt.qint8: dt.int8, dt.qint32: dt.int32}


def make(ints: np.ndarray, dtype: dt.DType, scales, zero_points, axis: int | None = None
         ) -> QuantizedTensor:
    """A QuantizedTensor over integer array `ints` (no checks: callers validated)."""
    q = object.__new__(QuantizedTensor)
    ints = np.asarray(ints, dtype=dtype.np)
    q._ints = ints
    q._data = _NoFloatMemory(ints)
    q.dtype, q.device = dtype, CPU
    q._grad = q._grad_fn = q._hooks = q._trace = q._base = None
    q._version, q._retains_grad, q._requires_grad = [0], False, False
    q._scales, q._zero_points, q._axis = scales, zero_points, axis
    q._qscheme = per_tensor_affine if axis is None else per_channel_affine
    return q


def _rebuild(ints, dtype, scales, zero_points, axis, scheme) -> QuantizedTensor:
    out = make(ints, dtype, scales, zero_points, axis)
    out._qscheme = scheme
    return out


# ---------------------------------------------------------------------- ops on quantized tensors
# movement ops keep the integers' meaning: they run on the integers and keep the parameters
_MOVEMENT = {"reshape", "permute", "expand", "slice", "cat"}


def apply_primitive(prim, args: tuple, attrs: dict, apply) -> QuantizedTensor:
    """The dispatcher's rule for a primitive with a quantized input (`apply` is the dispatcher's
    own, to run a movement op on the integers): movement ops and relu on per-tensor quantized
    tensors of one dtype and one scale and zero point; anything else is refused."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    first = tensors[0]
    if prim.name == "cast" and attrs.get("dtype") is first.dtype:
        return first              # a cast to its own dtype, as some composites do
    if prim.name not in _MOVEMENT and prim.name != "relu":
        raise op_error(prim.name, "not supported on a quantized tensor: " + _HOW,
                       NotImplementedError)
    same = all(isinstance(t, QuantizedTensor) and t.dtype is first.dtype and t._axis is None
               and (t._scales, t._zero_points) == (first._scales, first._zero_points)
               for t in tensors)
    if not same:
        raise op_error(prim.name, "kiln runs it only on per-tensor quantized tensors of one "
                       f"dtype, scale and zero point (got {_describe(tensors)}): " + _HOW,
                       NotImplementedError)
    if prim.name == "relu":       # zero is the zero point: the integers below it rise to it
        return first._copy(np.maximum(first._int, first._zero_points).astype(first._int.dtype))
    ints = [Tensor._make(a._int, _INT_DTYPE[a.dtype], CPU) if isinstance(a, Tensor) else a
            for a in args]
    return first._copy(apply(prim, tuple(ints), attrs)._data)


def _describe(tensors: list) -> str:
    return ", ".join(f"{t.dtype.name} {t._qscheme.name} scale={t._scales} "
                     f"zero_point={t._zero_points}" if isinstance(t, QuantizedTensor)
                     else f"a {t.dtype.name} tensor" for t in tensors)


# ---------------------------------------------------------------------- quantize / dequantize
def _float_input(op: str, input) -> np.ndarray:
    if not isinstance(input, Tensor) or isinstance(input, QuantizedTensor):
        raise op_error(op, f"expected a float32 tensor, got {type(input).__name__}"
                       + (f" of dtype {input.dtype}" if isinstance(input, Tensor) else ""),
                       TypeError)
    if input.dtype is not dt.float32:
        raise op_error(op, f"Quantize only works on a float32 tensor, got {input.dtype} "
                       "(convert it first with .float())")
    on_cpu(op, input)
    if input.requires_grad:
        input = input.detach()
    return np.asarray(input.cpu().numpy(), dtype=np.float32)


def on_cpu(op: str, input: Tensor) -> None:
    """kiln's quantized tensors and kernels are the x86 CPU engine's: other devices refused."""
    if input.device.type != "cpu":
        raise op_error(op, f"kiln quantizes on the CPU only (PyTorch's x86 kernels); got a "
                       f"tensor on {input.device}: call .cpu() first", NotImplementedError)


def _check_dtype(op: str, dtype) -> None:
    if dtype not in QUANTIZED_DTYPES:
        raise op_error(op, f"expected a quantized dtype (kiln.quint8, kiln.qint8 or "
                       f"kiln.qint32), got {dtype}")


def _number(value, what: str, kind):
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"quantize_per_tensor: {what} must be a single number, got a "
                             f"tensor of shape {tuple(value.shape)}")
        value = value.item()
    return kind(value)


def quantize_per_tensor(input: Tensor, scale, zero_point, dtype) -> QuantizedTensor:
    """`clamp(round(x / scale) + zero_point)` stored in `dtype` (torch.quantize_per_tensor)."""
    op = "quantize_per_tensor"
    x = _float_input(op, input)
    _check_dtype(op, dtype)
    # a tensor scale is float32 (as PyTorch reads it); a Python number keeps its double
    scale = float(np.float32(_number(scale, "scale", float))) if isinstance(scale, Tensor) \
        else _number(scale, "scale", float)
    zero_point = _number(zero_point, "zero_point", int)
    lo, hi = dtype_range(dtype)
    if not lo <= zero_point <= hi:
        raise op_error(op, f"zero_point {zero_point} is outside {dtype.name}'s range "
                       f"[{lo}, {hi}]")
    ints = _round_per_tensor(x, scale, zero_point, lo, hi, fused=dtype is not dt.qint32)
    return make(ints, dtype, scale, zero_point)


def _round_per_tensor(x: np.ndarray, scale: float, zero_point: int, lo: int, hi: int,
                      fused: bool) -> np.ndarray:
    """FBGEMM's rounding: `x * (1/scale) + zero_point` to nearest even, once when `fused` (a
    float32 multiply-add: the exact product and sum fit a float64 and round once to float32),
    otherwise with the float32 product rounded before the zero point is added."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inverse = np.float32(1) / np.float32(scale)
        if fused:
            t = (x.astype(np.float64) * np.float64(inverse) + zero_point).astype(np.float32)
        else:
            t = x * inverse + np.float32(zero_point)
        # NaN: the vector kernel's clamp gives the top of the range, int32's conversion INT_MIN
        return _clamp_round(t, lo, hi, nan_to=hi if fused else lo)


def _clamp_round(t: np.ndarray, lo: int, hi: int, nan_to: int) -> np.ndarray:
    """Float array `t` rounded to the nearest integer (ties to even), clamped into [lo, hi];
    NaN becomes `nan_to` (each PyTorch kernel has its own)."""
    with np.errstate(invalid="ignore"):
        out = np.clip(np.rint(np.asarray(t, np.float64)), lo, hi)
    return np.where(np.isnan(out), nan_to, out).astype(np.int64)


def quantize_per_channel(input: Tensor, scales: Tensor, zero_points: Tensor, axis: int,
                         dtype) -> QuantizedTensor:
    """Per-channel quantization along `axis`: channel c uses scales[c] and zero_points[c]."""
    op = "quantize_per_channel"
    x = _float_input(op, input)
    _check_dtype(op, dtype)
    if not 0 <= axis < x.ndim:         # PyTorch takes no negative axis here
        raise op_error(op, f"axis {axis} is out of range for a tensor of shape {x.shape} "
                       f"(expected 0 to {x.ndim - 1})", IndexError)
    s = np.asarray(scales.detach().cpu().numpy() if isinstance(scales, Tensor) else scales,
                   dtype=np.float64).reshape(-1)
    z = np.asarray(zero_points.detach().cpu().numpy() if isinstance(zero_points, Tensor)
                   else zero_points).astype(np.int64).reshape(-1)
    if s.shape[0] != x.shape[axis] or z.shape[0] != x.shape[axis]:
        raise op_error(op, f"expected {x.shape[axis]} scales and zero points (the size of "
                       f"axis {axis} of shape {x.shape}), got {s.shape[0]} and {z.shape[0]}")
    lo, hi = dtype_range(dtype)
    shape = [1] * x.ndim
    shape[axis] = -1
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inverse = (np.float32(1) / s.astype(np.float32)).reshape(shape)
        t = x * inverse + z.astype(np.float32).reshape(shape)
    nan_to = lo if dtype is dt.qint32 else 0
    return make(_clamp_round(t, lo, hi, nan_to), dtype, s, z, axis)


def dequantize(input):
    """`input.dequantize()`; a list of tensors gives a list (torch.dequantize)."""
    if isinstance(input, (list, tuple)):
        return [dequantize(t) for t in input]
    return input.dequantize()


# ---------------------------------------------------------------------- Tensor's methods
def _not_quantized(name: str):
    def method(self, *args, **kwargs):
        raise op_error(name, f"expected a quantized tensor, got a {self.dtype.name} one "
                       "(make one with kiln.quantize_per_tensor)", NotImplementedError)
    method.__name__ = name
    return method


def _plain_dequantize(self: Tensor) -> Tensor:
    """A float tensor's dequantize() is the tensor itself (as PyTorch)."""
    if not self.dtype.is_floating_point:
        raise op_error("dequantize", f"expected a quantized or float tensor, got "
                       f"{self.dtype.name}", NotImplementedError)
    return self


def bind_methods() -> None:
    """Give every Tensor the quantization methods: a plain tensor answers is_quantized False,
    its dequantize() is itself, and the q_* accessors raise (as PyTorch's CPU backend)."""
    Tensor.is_quantized = False
    Tensor.dequantize = _plain_dequantize
    for name in ("int_repr", "q_scale", "q_zero_point", "q_per_channel_scales",
                 "q_per_channel_zero_points", "q_per_channel_axis", "qscheme"):
        setattr(Tensor, name, _not_quantized(name))


def int_repr(input: QuantizedTensor) -> Tensor:
    return input.int_repr()


def q_scale(input: QuantizedTensor) -> float:
    return input.q_scale()


def q_zero_point(input: QuantizedTensor) -> int:
    return input.q_zero_point()


def q_per_channel_scales(input: QuantizedTensor) -> Tensor:
    return input.q_per_channel_scales()


def q_per_channel_zero_points(input: QuantizedTensor) -> Tensor:
    return input.q_per_channel_zero_points()


def q_per_channel_axis(input: QuantizedTensor) -> int:
    return input.q_per_channel_axis()


# ---------------------------------------------------------------------- fake quantization
def fake_quantize_per_tensor_affine(input: Tensor, scale, zero_point, quant_min: int,
                                    quant_max: int) -> Tensor:
    """Quantize and dequantize in float32, `(clamp(round(x / scale) + zp) - zp) * scale`, with
    the straight-through gradient: the incoming gradient where the rounded value lay inside
    [quant_min, quant_max], zero outside (torch.fake_quantize_per_tensor_affine). Scale and
    zero point may be numbers or one-element tensors (an observer's qparams: then the call
    traces, reading no value into Python)."""
    op = "fake_quantize_per_tensor_affine"
    _check_fake_input(op, input, quant_min, quant_max)
    if isinstance(scale, Tensor) or isinstance(zero_point, Tensor):
        s = _qparam_tensor(op, "scale", scale, input).reshape(())
        z = _qparam_tensor(op, "zero_point", zero_point, input).reshape(())
    else:
        s, z = np.float32(_number(scale, "scale", float)), np.float32(int(zero_point))
    return _fake_quantize(input, s, z, quant_min, quant_max)


def fake_quantize_per_channel_affine(input: Tensor, scale: Tensor, zero_point: Tensor,
                                     axis: int, quant_min: int, quant_max: int) -> Tensor:
    """fake_quantize_per_tensor_affine with channel c of `axis` using scale[c], zero_point[c]."""
    op = "fake_quantize_per_channel_affine"
    _check_fake_input(op, input, quant_min, quant_max)
    ndim = input.ndim
    if not -ndim <= axis < max(ndim, 1):
        raise op_error(op, f"axis {axis} is out of range for shape {tuple(input.shape)}",
                       IndexError)
    shape = [1] * ndim
    shape[axis % ndim] = -1
    if scale.numel() != input.shape[axis] or zero_point.numel() != input.shape[axis]:
        raise op_error(op, f"expected {input.shape[axis]} scales and zero points (axis {axis} "
                       f"of shape {tuple(input.shape)}), got {scale.numel()} and "
                       f"{zero_point.numel()}")
    s = _qparam_tensor(op, "scale", scale, input).reshape(shape)
    z = _qparam_tensor(op, "zero_point", zero_point, input).reshape(shape)
    return _fake_quantize(input, s, z, quant_min, quant_max)


def _check_fake_input(op: str, input: Tensor, quant_min: int, quant_max: int) -> None:
    if not isinstance(input, Tensor) or input.dtype is not dt.float32:
        raise op_error(op, f"expected a float32 tensor, got "
                       f"{getattr(input, 'dtype', type(input).__name__)}")
    if not quant_min <= quant_max:
        raise op_error(op, f"quant_min ({quant_min}) must not exceed quant_max ({quant_max})")


def _qparam_tensor(op: str, what: str, value, input: Tensor) -> Tensor:
    """A scale or zero point as a float32 tensor on input's device, out of autograd."""
    if not isinstance(value, Tensor):
        return Tensor._make(np.asarray(value, dtype=np.float32), dt.float32, CPU).to(input.device)
    if op.endswith("tensor_affine") and value.numel() != 1:
        raise ValueError(f"{op}: {what} must be a single number, got a tensor of shape "
                         f"{tuple(value.shape)}")
    return value.detach().to(device=input.device, dtype=dt.float32)


def _fake_quantize(input: Tensor, scale, zero_point, quant_min: int, quant_max: int) -> Tensor:
    """With tensor operations (so the compiler traces it): x times the float32 reciprocal of
    the scale, rounded half to even, as PyTorch's kernel computes it."""
    from kiln.tracer import functional as F
    x = input.detach()
    reciprocal = 1.0 / scale if isinstance(scale, Tensor) else np.float32(1) / scale
    rounded = F.round(x * reciprocal) + zero_point
    inside = F.logical_and(rounded >= quant_min, rounded <= quant_max)
    values = (F.clamp(rounded, quant_min, quant_max) - zero_point) * scale
    if not (input.requires_grad and _grad_enabled()):
        return values
    # values + 0: the straight-through estimator passes the gradient where `inside`
    return values + (input - x) * inside.to(dt.float32)


def _grad_enabled() -> bool:
    from kiln.tracer.tensor import STATE
    return STATE.grad_enabled
