"""Public tensor operations, composed in Python from the primitives of `kiln.ir.ops`.

Type promotion, broadcasting and PyTorch's argument conventions (dim/keepdim, negative dims,
`alpha=`) are handled here; the arithmetic itself is always a primitive call, so autograd,
tracing and fusion see through every function in this file with no extra code.
"""

from __future__ import annotations

import builtins
import math
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P, ShapeError, broadcast_shapes, normalize_axis
from kiln.tracer import creation
from kiln.tracer.errors import op_error
from kiln.tracer.provenance import composite
from kiln.tracer.tensor import STATE, Tensor

_NUMBER = (int, float, bool)
_py_max, _py_min, _py_sum, _py_abs, _py_round = (builtins.max, builtins.min, builtins.sum,
                                                builtins.abs, builtins.round)


def _number(x):
    """Python number of a literal operand; NumPy scalars count as Python numbers."""
    if isinstance(x, _NUMBER):
        return x
    if isinstance(x, (np.generic,)):
        return x.item()
    return None


def _as_tensor(x, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return creation.tensor(x, device=like.device if like is not None else None)


def result_type(*operands) -> dt.DType:
    """PyTorch's promoted dtype of tensors and Python numbers (torch.result_type)."""
    dims, zero_dims, scalars = [], [], []
    for x in operands:
        if isinstance(x, Tensor):
            (dims if x._data.ndim else zero_dims).append(x.dtype)
        else:
            scalars.append(dt.scalar_dtype(_number(x) if _number(x) is not None else x))
    return dt.result_type(tuple(dims), tuple(zero_dims), tuple(scalars))


def _cast_operand(x, dtype):
    if isinstance(x, Tensor):
        return x if x.dtype is dtype else P.cast(x, dtype=dtype)
    if dtype is dt.bool_:
        return bool(x)
    return float(x) if dtype.is_floating_point else int(x)


def _promoted(a, b, float_only: bool = False):
    """Both operands converted to their common dtype, literals left as Python numbers."""
    na, nb = _number(a), _number(b)
    if na is not None:
        a = na
    elif not isinstance(a, Tensor):
        a = _as_tensor(a, b if isinstance(b, Tensor) else None)
    if nb is not None:
        b = nb
    elif not isinstance(b, Tensor):
        b = _as_tensor(b, a if isinstance(a, Tensor) else None)
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype is b.dtype:
        dtype = a.dtype
    else:
        dtype = result_type(a, b)
    if float_only and not dtype.is_floating_point:
        dtype = dt.get_default_dtype()
    return _cast_operand(a, dtype), _cast_operand(b, dtype)


def _binary(prim, a, b, float_only=False):
    # Fast path for the common cases, where promotion keeps the tensor's dtype and `_promoted`
    # would hand back the same operands: two tensors of one dtype, or a floating tensor and a
    # Python int or float (which `_cast_operand` makes a float).
    if isinstance(a, Tensor):
        if isinstance(b, Tensor):
            if a.dtype is b.dtype and (not float_only or a.dtype.category == dt.FLOAT):
                return prim(a, b)
        elif (type(b) is float or type(b) is int) and a.dtype.category == dt.FLOAT:
            return prim(a, float(b))
    elif (type(a) is float or type(a) is int) and isinstance(b, Tensor) and \
            b.dtype.category == dt.FLOAT:
        return prim(float(a), b)
    a, b = _promoted(a, b, float_only)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError(f"{prim.__name__}: expected at least one tensor, got "
                        f"{type(a).__name__} and {type(b).__name__}")
    return prim(a, b)


def _broadcast(op: str, *shapes: tuple) -> tuple:
    """The broadcast of `shapes`; on a mismatch, the user-facing error names `op`."""
    try:
        return broadcast_shapes(*shapes)
    except ShapeError as e:
        raise op_error(op, str(e), e.kind) from None


def _floating(x: Tensor) -> Tensor:
    """Integer and bool inputs of float functions (exp, sin, mean) become the default float."""
    if not isinstance(x, Tensor):
        x = _as_tensor(x)
    return x if x.dtype.is_floating_point else P.cast(x, dtype=dt.get_default_dtype())


# ----------------------------------------------------------------------------- arithmetic

def add(input, other, *, alpha=1):
    if alpha != 1:
        other = mul(other, alpha)
    return _binary(P.add, input, other)


def sub(input, other, *, alpha=1):
    if isinstance(input, Tensor) and input.dtype is dt.bool_ and isinstance(other, Tensor) \
            and other.dtype is dt.bool_:
        raise op_error("sub", "Subtraction, the `-` operator, with two bool tensors is not "
                       "supported. Use the `^` or `logical_xor()` operator instead.")
    if alpha != 1:
        other = mul(other, alpha)
    return _binary(P.sub, input, other)


def rsub(input, other, *, alpha=1):
    return sub(other, input, alpha=alpha)


def mul(input, other):
    return _binary(P.mul, input, other)


def div(input, other, *, rounding_mode=None):
    if rounding_mode == "floor":
        _refuse_integer_division_by_zero("div", input, other)
        return floor_divide(input, other)
    if rounding_mode == "trunc":
        _refuse_integer_division_by_zero("div", input, other)
        a, b = _promoted(input, other)
        if a.dtype.is_floating_point if isinstance(a, Tensor) else b.dtype.is_floating_point:
            return trunc(P.div(a, b))
        q = P.floordiv(a, b)
        # floor rounds toward -inf; trunc toward 0 differs when the signs differ and r != 0
        fix = logical_and(ne(P.mod(a, b), 0), ne(lt(a, 0), lt(b, 0)))
        return P.where(fix, q + 1, q)    # fix is bool, q + 1 has q's dtype: where() adds nothing
    return _binary(P.div, input, other, float_only=True)


true_divide = divide = div
multiply, subtract = mul, sub


def _refuse_integer_division_by_zero(op: str, a, b) -> None:
    """Integer `//`, `%`, fmod and rounded div by zero raise, as in PyTorch (NumPy, and so kiln
    before this check, gave 0). One pass over the divisor; a float operand divides by zero to
    inf or NaN instead. A tensor divisor is checked in eager mode only (a trace cannot read
    its values)."""
    for x in (a, b):
        if isinstance(x, Tensor) and x.dtype.is_floating_point or isinstance(x, float):
            return
    if isinstance(a, Tensor) and a._data.size == 0:
        return                            # nothing is divided: PyTorch returns the empty result
    if isinstance(b, Tensor):
        if STATE.tracer is not None or b._data.size == 0 or b._data.all():
            return
        what = f"the divisor ({b.dtype.name}, shape {list(b.shape)}) has a zero"
    elif b == 0:
        what = "the divisor is the number 0"
    else:
        return
    dividend = f"an {a.dtype.name} tensor of shape {list(a.shape)}" \
        if isinstance(a, Tensor) else f"the number {a}"
    raise op_error(op, f"ZeroDivisionError: integer division by zero: {what} (the dividend is "
                   f"{dividend}); divide floating-point tensors, or replace the zeros first",
                   RuntimeError)


def floor_divide(input, other):
    _refuse_integer_division_by_zero("floor_divide", input, other)
    return _binary(P.floordiv, input, other)


def remainder(input, other):
    _refuse_integer_division_by_zero("remainder", input, other)
    return _binary(P.mod, input, other)


def fmod(input, other):
    _refuse_integer_division_by_zero("fmod", input, other)
    a, b = _promoted(input, other)
    return a - trunc(a / b) * b if _is_float(a, b) else a - div(a, b, rounding_mode="trunc") * b


def _is_float(a, b) -> bool:
    return (a if isinstance(a, Tensor) else b).dtype.is_floating_point


def pow(input, exponent):
    if isinstance(input, Tensor) and _number(exponent) is not None:
        e = _number(exponent)
        if e == 2 and (input.dtype.is_floating_point or not isinstance(e, float)):
            return input * input      # the common square, exactly as PyTorch rounds it
        if isinstance(e, float) and not input.dtype.is_floating_point:
            input = _floating(input)
    return _binary(P.pow, input, exponent)


def float_power(input, exponent):
    return pow(_as_tensor(input).to(dt.float64), exponent)


def neg(input):
    if input.dtype is dt.bool_:
        raise op_error("neg", "Negation, the `-` operator, on a bool tensor is not supported. "
                       "If you are trying to invert a mask, use the `~` or `logical_not()` "
                       "operator instead.")
    return P.neg(input)


negative = neg


def abs(input):
    return P.abs(input)


absolute = abs


def sign(input):
    return P.sign(input)


def reciprocal(input):
    return P.div(1.0, _floating(input))


def square(input):
    return input * input


def _float_unary(name):
    prim = getattr(P, name)

    def op(input):
        return prim(_floating(input))
    op.__name__ = name
    return op


exp, log, log1p, expm1, sqrt = (_float_unary(n) for n in ("exp", "log", "log1p", "expm1", "sqrt"))
sin, cos, tanh, sigmoid, erf = (_float_unary(n) for n in ("sin", "cos", "tanh", "sigmoid", "erf"))


def rsqrt(input):
    return P.div(1.0, sqrt(input))


def tan(input):
    x = _floating(input)
    return P.sin(x) / P.cos(x)


def exp2(input):
    return P.pow(2.0, _floating(input))


def log2(input):
    return P.log(_floating(input)) * (1 / math.log(2))


def log10(input):
    return P.log(_floating(input)) * (1 / math.log(10))


def floor(input):
    return P.floor(input)


def ceil(input):
    return P.ceil(input)


def trunc(input):
    return P.trunc(input)


fix = trunc


def round(input, *, decimals=0):
    if input.dtype.is_floating_point and decimals:
        return P.round(input, decimals=decimals)
    return P.round(input)


def frac(input):
    return input - trunc(input)


def maximum(input, other):
    return _binary(P.maximum, input, other)


def minimum(input, other):
    return _binary(P.minimum, input, other)


# PyTorch's C++ names of dtypes, which some of its messages use
_TORCH_DTYPE_NAMES = {"bool": "Bool", "uint8": "Byte", "int32": "Int", "int64": "Long",
                      "float16": "Half", "float32": "Float", "float64": "Double"}


def where(condition, input=None, other=None):
    if input is None and other is None:
        return nonzero(condition, as_tuple=True)
    if not isinstance(condition, Tensor):
        condition = _as_tensor(condition)
    if condition.dtype is not dt.bool_:
        if condition.dtype is not dt.uint8:     # PyTorch still takes uint8 masks (deprecated)
            raise op_error("where", f"where expected condition to be a boolean tensor, but got "
                           f"a tensor with dtype {_TORCH_DTYPE_NAMES[condition.dtype.name]} "
                           f"({condition.dtype.name}, shape {list(condition.shape)}); pass a "
                           f"comparison such as `condition != 0`")
        condition = P.ne(condition, 0)
    if isinstance(input, Tensor) and isinstance(other, Tensor) and input.dtype is other.dtype:
        x, y = input, other          # what _promoted would give, found quicker
    else:
        x, y = _promoted(input, other)
    return P.where(condition, x, y)


def clamp(input, min=None, max=None):
    if min is None and max is None:
        raise op_error("clamp", "At least one of 'min' or 'max' must not be None")
    out = input
    # where() rather than maximum/minimum: PyTorch passes the gradient where min <= x <= max
    if min is not None:
        lo, x = _promoted(min, out)
        out = P.where(lt(x, lo), lo, x) if isinstance(lo, Tensor) else P.where(P.lt(x, lo), lo, x)
    if max is not None:
        hi, x = _promoted(max, out)
        out = P.where(gt(x, hi), hi, x) if isinstance(hi, Tensor) else P.where(P.gt(x, hi), hi, x)
    return out


clip = clamp


def clamp_min(input, min):
    return clamp(input, min=min)


def clamp_max(input, max):
    return clamp(input, max=max)


@composite
def lerp(input, end, weight):
    return input + weight * (end - input)


@composite
def addcmul(input, tensor1, tensor2, *, value=1):
    return input + value * tensor1 * tensor2 if value != 1 else input + tensor1 * tensor2


@composite
def addcdiv(input, tensor1, tensor2, *, value=1):
    return input + value * (tensor1 / tensor2) if value != 1 else input + tensor1 / tensor2


@composite
def hypot(input, other):
    return sqrt(input * input + other * other)


def atan(input):
    # arctan from a rational approximation would lose accuracy; NumPy is exact here
    x = _floating(input)
    return _atan_series(x)


def _atan_series(x):
    # atan(x) = 2 * atan(x / (1 + sqrt(1 + x^2))) halves the angle; after two halvings |y| < 0.42
    # and 12 Taylor terms reach float64 accuracy. Built from primitives, so it differentiates.
    y = x
    for _ in range(2):
        y = y / (1 + sqrt(1 + y * y))
    term, total, y2 = y, y, y * y
    for k in range(1, 14):
        term = -term * y2
        total = total + term / (2 * k + 1)
    return total * 4


# ----------------------------------------------------------------------------- comparison, logic

def eq(input, other):
    return _binary(P.eq, input, other)


def ne(input, other):
    return _binary(P.ne, input, other)


def lt(input, other):
    return _binary(P.lt, input, other)


def le(input, other):
    return _binary(P.le, input, other)


def gt(input, other):
    return _binary(P.gt, input, other)


def ge(input, other):
    return _binary(P.ge, input, other)


less, less_equal, greater, greater_equal, not_equal = lt, le, gt, ge, ne


def _bool(x):
    x = _as_tensor(x)
    return x if x.dtype is dt.bool_ else P.ne(x, 0)


def logical_not(input):
    return P.bitwise_not(_bool(input))


def logical_and(input, other):
    return P.bitwise_and(_bool(input), _bool(other))


def logical_or(input, other):
    return P.bitwise_or(_bool(input), _bool(other))


def logical_xor(input, other):
    return P.bitwise_xor(_bool(input), _bool(other))


def _bitwise(prim, name):
    def op(input, other):
        a, b = _promoted(input, other)
        dtype = (a if isinstance(a, Tensor) else b).dtype
        if dtype.is_floating_point:
            raise op_error(name, f"\"{name}_cpu\" not implemented for '{dtype.name}'", TypeError)
        return prim(a, b)
    op.__name__ = name
    return op


bitwise_and = _bitwise(P.bitwise_and, "bitwise_and")
bitwise_or = _bitwise(P.bitwise_or, "bitwise_or")
bitwise_xor = _bitwise(P.bitwise_xor, "bitwise_xor")


def bitwise_not(input):
    if input.dtype.is_floating_point:
        raise op_error("bitwise_not", f"not implemented for '{input.dtype.name}'", TypeError)
    return P.bitwise_not(input)


def isnan(input):
    return P.ne(input, input) if input.dtype.is_floating_point else zeros_like(input, dt.bool_)


def isinf(input):
    if not input.dtype.is_floating_point:
        return zeros_like(input, dt.bool_)
    return P.eq(P.abs(input), math.inf)


def isposinf(input):
    return eq(input, math.inf)


def isneginf(input):
    return eq(input, -math.inf)


def isfinite(input):
    if not input.dtype.is_floating_point:
        return ones_like(input, dt.bool_)
    return P.lt(P.abs(input), math.inf)


@composite
def nan_to_num(input, nan=0.0, posinf=None, neginf=None):
    if not input.dtype.is_floating_point:
        return input.clone()
    info = np.finfo(input.dtype.np)
    posinf = float(info.max) if posinf is None else posinf
    neginf = float(info.min) if neginf is None else neginf
    out = P.where(P.ne(input, input), nan, input)
    out = P.where(P.eq(out, math.inf), posinf, out)
    return P.where(P.eq(out, -math.inf), neginf, out)


def allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False) -> bool:
    return bool(isclose(input, other, rtol, atol, equal_nan).all())


@composite
def isclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
    a, b = _promoted(input, other)
    close = le(abs(a - b), atol + rtol * abs(b))
    close = logical_or(close, eq(a, b))
    if equal_nan:
        close = logical_or(close, logical_and(isnan(a), isnan(b)))
    return close


def equal(input, other) -> bool:
    return tuple(input.shape) == tuple(other.shape) and bool(eq(input, other).all())


# ----------------------------------------------------------------------------- activations

def relu(input):
    return P.relu(input)


@composite
def relu6(input):
    return hardtanh(input, 0.0, 6.0)


@composite
def hardtanh(input, min_val=-1.0, max_val=1.0):
    # not clamp: PyTorch passes hardtanh's gradient strictly inside (min, max) and clamp's
    # on the closed interval; NaN falls through both comparisons and propagates
    return P.where(P.le(input, min_val), min_val,
                   P.where(P.ge(input, max_val), max_val, input))


@composite
def leaky_relu(input, negative_slope=0.01):
    return P.where(P.gt(input, 0), input, input * negative_slope)


@composite
def elu(input, alpha=1.0):
    return P.where(P.gt(input, 0), input, P.expm1(input) * alpha)


@composite
def selu(input):
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return elu(input, alpha) * scale


# Below this, each gate that _times_gate multiplies by (Phi(x), sigmoid(x), tanh(softplus(x)),
# hardsigmoid(x)) is exactly 0 in every float dtype; and it is finite even in float16
_GATE_FLOOR = -6e4


def _times_gate(x, gate):
    """x * gate(x), for a gate that goes to 0 as x goes to -inf (gelu, silu, mish, hardswish):
    at x = -inf the result is the limit, -0, where x * gate would be -inf * 0 = NaN. x is
    raised to the floor first (a where, whose gradient is one op; NaN stays NaN through the
    gate)."""
    return P.where(P.gt(x, _GATE_FLOOR), x, _GATE_FLOOR) * gate


@composite
def gelu(input, approximate="none"):
    x = _floating(input)
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)
        return _times_gate(x, (P.tanh(inner) + 1) * 0.5)
    if approximate != "none":
        raise op_error("gelu", f"approximate argument must be either none or tanh, got "
                       f"{approximate!r}", ValueError)
    return _times_gate(x, (P.erf(x * (1 / math.sqrt(2))) + 1) * 0.5)


@composite
def silu(input):
    return _times_gate(input, P.sigmoid(input))


@composite
def mish(input):
    return _times_gate(input, tanh(softplus(input)))


@composite
def softplus(input, beta=1.0, threshold=20.0):
    scaled = input * beta if beta != 1 else input
    soft = P.log1p(P.exp(scaled)) / beta if beta != 1 else P.log1p(P.exp(scaled))
    return P.where(P.gt(scaled, threshold), input, soft)


@composite
def logsigmoid(input):
    return -softplus(-input)


@composite
def hardsigmoid(input):
    return clamp(input / 6 + 0.5, 0.0, 1.0)


@composite
def hardswish(input):
    return _times_gate(input, hardsigmoid(input))


@composite
def softsign(input):
    return input / (P.abs(input) + 1)


@composite
def tanhshrink(input):
    return input - P.tanh(input)


# ----------------------------------------------------------------------------- reductions

def _axes(dim, ndim: int) -> tuple:
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, (list, tuple)):
        if len(dim) == 0:
            return tuple(range(ndim))
        axes = tuple(sorted({_norm_dim(d, ndim) for d in dim}))
        if len(axes) != len(dim):
            raise op_error("reduction", f"dim {list(dim)} appears multiple times in the list "
                           "of dims")
        return axes
    return (_norm_dim(dim, ndim),)


def _norm_dim(dim, ndim: int) -> int:
    if type(dim) is int and -ndim <= dim < ndim:     # the common case, no checks needed
        return dim + ndim if dim < 0 else dim
    try:
        return normalize_axis(int(dim), ndim)
    except ShapeError as e:
        raise op_error("dim", str(e), IndexError) from None


def _widened(x: Tensor) -> Tensor:
    """x as float32 when it is float16: PyTorch accumulates reductions of half values in float
    (the sum of 4096 values near 100 overflows float16's 65504 on the way to a mean of 100).
    A cast, not a wider accumulator inside the primitive, so a trace records it and every
    backend computes in float32 too."""
    return P.cast(x, dtype=dt.float32) if x.dtype is dt.float16 else x


def _narrowed(out: Tensor, dtype: dt.DType) -> Tensor:
    """A result computed on `_widened` input, back in the input's dtype."""
    return out if out.dtype is dtype else P.cast(out, dtype=dtype)


def sum(input, dim=None, keepdim=False, *, dtype=None):
    if dim is None and dtype is None and input.dtype.is_floating_point and input._data.ndim \
            and input.dtype is not dt.float16:
        return P.sum(input, axes=tuple(range(input._data.ndim)), keepdim=bool(keepdim))
    if dtype is None and input.dtype is dt.float16 and input._data.ndim:
        return _narrowed(sum(_widened(input), dim, keepdim), dt.float16)
    if dtype is not None:
        input = input.to(dtype)
    elif input.dtype.category != dt.FLOAT and input.dtype is not dt.int64:
        input = P.cast(input, dtype=dt.int64)     # PyTorch sums bools and ints as int64
    ndim = input._data.ndim
    axes = _axes(dim, ndim)
    if ndim == 0:
        return input.clone()
    return P.sum(input, axes=axes, keepdim=bool(keepdim))


def nansum(input, dim=None, keepdim=False, *, dtype=None):
    return sum(where(isnan(input), 0.0, input), dim, keepdim, dtype=dtype)


@composite
def mean(input, dim=None, keepdim=False, *, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    if not input.dtype.is_floating_point:
        raise op_error("mean", "could not infer output dtype. Input dtype must be either a "
                       f"floating point or complex dtype. Got: {input.dtype.name}")
    if input.dtype is dt.float16:
        return _narrowed(mean(_widened(input), dim, keepdim), dt.float16)
    axes = _axes(dim, input.ndim)
    if input.ndim:
        shape = input._data.shape
        count = math.prod(shape[a] for a in axes)
        total = P.sum(input, axes=axes, keepdim=bool(keepdim))
    else:
        count, total = 1, input.clone()
    return total / count if count else total * math.nan


@composite
def nanmean(input, dim=None, keepdim=False):
    if input.dtype is dt.float16:
        return _narrowed(nanmean(_widened(input), dim, keepdim), dt.float16)
    keep = logical_not(isnan(input))
    return nansum(input, dim, keepdim) / sum(keep, dim, keepdim)


ReturnTypes = namedtuple("values_indices", ["values", "indices"])


def _values_indices(values, indices):
    return ReturnTypes(values, indices)


def amax(input, dim=None, keepdim=False):
    if input.ndim == 0:
        return input.clone()
    return P.max(input, axes=_axes(dim, input.ndim), keepdim=bool(keepdim))


def amin(input, dim=None, keepdim=False):
    if input.dtype is dt.bool_:
        return logical_not(amax(logical_not(input), dim, keepdim))
    return P.neg(amax(P.neg(input), dim, keepdim))


def max(input, dim=None, keepdim=False, *, other=None):
    if isinstance(dim, Tensor):
        return maximum(input, dim)
    if dim is None:
        return amax(input)
    return _at_indices(input, dim, keepdim, argmax(input, dim, keepdim=True))


def _at_indices(input, dim, keepdim, indices):
    """(values, indices) of max/min along `dim`: the values gathered at the indices, so the
    gradient goes to the chosen element only, as in PyTorch (amax splits it among ties)."""
    if input.ndim == 0:
        return _values_indices(input.clone(), reshape(indices, ()))
    d = _norm_dim(dim, input.ndim)
    values = gather(input, d, indices)
    if not keepdim:
        values, indices = squeeze(values, d), squeeze(indices, d)
    return _values_indices(values, indices)


def min(input, dim=None, keepdim=False):
    if isinstance(dim, Tensor):
        return minimum(input, dim)
    if dim is None:
        return amin(input)
    return _at_indices(input, dim, keepdim, argmin(input, dim, keepdim=True))


def argmax(input, dim=None, keepdim=False):
    if dim is None:
        flat = reshape(input, (-1,))
        out = P.argmax(flat, axis=0, keepdim=False)
        return reshape(out, (1,) * input.ndim) if keepdim else out
    if input.ndim == 0:
        return zeros((), dtype=dt.int64, device=input.device)
    return P.argmax(input, axis=_norm_dim(dim, input.ndim), keepdim=bool(keepdim))


def argmin(input, dim=None, keepdim=False):
    x = input if input.dtype is not dt.bool_ else input.to(dt.int64)
    return argmax(P.neg(x) if x.dtype.category != dt.INT else -x, dim, keepdim)


def prod(input, dim=None, keepdim=False, *, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    elif input.dtype.category != dt.FLOAT:
        input = P.cast(input, dtype=dt.int64)
    if input.ndim == 0:
        return input.clone()
    if input.dtype is dt.float16:
        return _narrowed(prod(_widened(input), dim, keepdim), dt.float16)
    if dim is None:
        return P.prod(reshape(input, (-1,)), axes=(0,), keepdim=False)
    return P.prod(input, axes=_axes(dim, input.ndim), keepdim=bool(keepdim))


@composite
def var(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    x = _floating(input)
    if x.dtype is dt.float16:
        return _narrowed(var(_widened(x), dim, unbiased, keepdim, correction=correction),
                         dt.float16)
    axes = _axes(dim, x.ndim)
    n = math.prod(x.shape[a] for a in axes) if x.ndim else 1
    centered = x - mean(x, axes if x.ndim else None, keepdim=True)
    return sum(centered * centered, axes if x.ndim else None, keepdim) / _py_max(n - correction, 0)


@composite
def std(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    if isinstance(input, Tensor) and input.dtype is dt.float16:
        return _narrowed(std(_widened(input), dim, unbiased, keepdim, correction=correction),
                         dt.float16)
    v = var(input, dim, unbiased, keepdim, correction=correction)
    # where the variance is 0, sqrt's gradient is infinite; PyTorch defines std's as 0 there
    zero = P.eq(v, 0)
    return P.where(zero, 0.0, sqrt(P.where(zero, 1.0, v)))


@composite
def var_mean(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return (var(input, dim, unbiased, keepdim, correction=correction),
            mean(input, dim, keepdim))


@composite
def std_mean(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return (std(input, dim, unbiased, keepdim, correction=correction),
            mean(input, dim, keepdim))


@composite
def logsumexp(input, dim=None, keepdim=False):
    x = _floating(input)
    if x.dtype is dt.float16:
        return _narrowed(logsumexp(_widened(x), dim, keepdim), dt.float16)
    axes = _axes(dim, x.ndim)
    if x.ndim == 0:
        return x.clone()
    if _py_any(x.shape[a] == 0 for a in axes):
        m = zeros(1, dtype=x.dtype, device=x.device)     # an empty sum: log(0) = -inf
    else:
        m = P.max(x, axes=axes, keepdim=True).detach()
        m = P.where(P.eq(P.abs(m), math.inf), 0.0, m)     # all -inf rows stay -inf, not nan
    out = P.log(P.sum(P.exp(x - m), axes=axes, keepdim=True)) + m
    return out if keepdim else squeeze(out, axes)


def all(input, dim=None, keepdim=False):
    return logical_not(any(logical_not(input), dim, keepdim))


def any(input, dim=None, keepdim=False):
    b = _bool(input)
    if b.ndim == 0:
        return b.clone()
    return P.gt(P.max(P.cast(b, dtype=dt.int32), axes=_axes(dim, b.ndim), keepdim=bool(keepdim))
                if b.numel() else P.sum(P.cast(b, dtype=dt.int32), axes=_axes(dim, b.ndim),
                                        keepdim=bool(keepdim)), 0)


def count_nonzero(input, dim=None):
    return sum(ne(input, 0), dim)


def _norm_root(total, root):
    """root(total) with gradient 0 where total is 0, as PyTorch's norm has at x == 0: there
    the root's derivative is infinite, and the chain rule would make it inf * 0 = NaN."""
    if not total.requires_grad:
        return root(total)
    zero = P.eq(total, 0)
    return P.where(zero, 0.0, root(P.where(zero, 1.0, total)))


@composite
def norm(input, p="fro", dim=None, keepdim=False, dtype=None):
    x = _floating(input if dtype is None else input.to(dtype))
    if x.dtype is dt.float16:
        return _narrowed(norm(_widened(x), p, dim, keepdim), dt.float16)
    if p in ("fro", 2, 2.0, None):
        return _norm_root(sum(x * x, dim, keepdim), sqrt)
    if p in (math.inf, "inf"):
        return amax(abs(x), dim, keepdim)
    if p == -math.inf:
        return amin(abs(x), dim, keepdim)
    if p == 1:
        return sum(abs(x), dim, keepdim)
    if p == 0:
        return sum(abs(sign(x)), dim, keepdim)    # differentiable (gradient 0), as in PyTorch
    return _norm_root(sum(pow(abs(x), p), dim, keepdim), lambda t: pow(t, 1.0 / p))


@composite
def dist(input, other, p=2):
    return norm(input - other, p)


def cumsum(input, dim, *, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    elif input.dtype.category != dt.FLOAT:
        input = input.to(dt.int64)
    if input.ndim == 0:
        return input.clone()
    if input.dtype is dt.float16:
        return _narrowed(cumsum(_widened(input), dim), dt.float16)
    return P.cumsum(input, axis=_norm_dim(dim, input.ndim))


@composite
def cumprod(input, dim):
    # exp(cumsum(log)) loses signs and zeros; a running product from cumsum over log|x| with a
    # sign and zero count keeps both, and every step stays a primitive.
    x = _floating(input)
    d = _norm_dim(dim, x.ndim)
    is_zero = eq(x, 0)
    mag = exp(cumsum(log(where(is_zero, 1.0, abs(x))), d))
    negatives = cumsum(lt(x, 0).to(dt.int64), d)
    zero_seen = gt(cumsum(is_zero.to(dt.int64), d), 0)
    signed = where(eq(remainder(negatives, 2), 1), -mag, mag)
    return where(zero_seen, 0.0, signed)


# ----------------------------------------------------------------------------- shapes, movement

def _shape_arg(shape) -> tuple:
    if len(shape) == 1 and type(shape[0]) is int:      # reshape(-1): the common case
        return shape
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 1 and isinstance(shape[0], Tensor):
        shape = tuple(shape[0].tolist())
    return tuple(map(int, shape))


def _infer_shape(shape: tuple, numel: int, op: str = "view") -> tuple:
    if shape == (-1,):
        return (numel,)
    if -1 not in shape:
        if math.prod(shape) != numel:
            raise op_error(op, f"shape '{list(shape)}' is invalid for input of size {numel}")
        return shape
    if shape.count(-1) > 1:
        raise op_error(op, "only one dimension can be inferred")
    known = math.prod(s for s in shape if s != -1)
    if known == 0 or numel % known:
        raise op_error(op, f"shape '{list(shape)}' is invalid for input of size {numel}")
    return tuple(numel // known if s == -1 else s for s in shape)


def reshape(input, *shape):
    shape = _infer_shape(_shape_arg(shape), input._data.size, "reshape")
    if shape == input._data.shape:
        return input if STATE.tracer is None and not input.requires_grad else \
            P.reshape(input, shape=shape)
    return P.reshape(input, shape=shape)


def view(input, *shape):
    if len(shape) == 1 and isinstance(shape[0], dt.DType):
        raise op_error("view", "viewing as another dtype is not supported; use .to(dtype)",
                       NotImplementedError)
    shape = _infer_shape(_shape_arg(shape), input._data.size, "view")
    data = input._data
    if not data.flags.c_contiguous and not _viewable(data, shape):
        # the reshape would copy, and writes through the result would not reach `input`
        raise op_error("view", f"view size is not compatible with input tensor's size and "
                       f"stride (at least one dimension spans across two contiguous "
                       f"subspaces): shape {list(data.shape)}, stride {list(input.stride())}, "
                       f"view shape {list(shape)}. Use .reshape(...) instead.")
    return P.reshape(input, shape=shape)


def _viewable(data, shape: tuple) -> bool:
    """Whether `shape` can view `data`'s memory without a copy: each run of old dims laid out
    contiguously (stride[d-1] == size[d] * stride[d], size-1 dims aside) must split into whole
    new dims (PyTorch's computeStride)."""
    old, new = data.shape, shape
    if data.size == 0 or not old:
        return True
    strides = [st // data.itemsize for st in data.strides]
    view_d = len(new) - 1
    chunk_stride = strides[-1]
    tensor_numel = view_numel = 1
    for d in range(len(old) - 1, -1, -1):
        tensor_numel *= old[d]
        if d == 0 or (old[d - 1] != 1 and strides[d - 1] != tensor_numel * chunk_stride):
            while view_d >= 0 and (view_numel < tensor_numel or new[view_d] == 1):
                view_numel *= new[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return False
            if d > 0:
                chunk_stride = strides[d - 1]
                tensor_numel = view_numel = 1
    return view_d == -1


def view_as(input, other):
    return view(input, tuple(other.shape))


def reshape_as(input, other):
    return reshape(input, tuple(other.shape))


def flatten(input, start_dim=0, end_dim=-1):
    if input.ndim == 0:
        return P.reshape(input, shape=(1,))
    s, e = _norm_dim(start_dim, input.ndim), _norm_dim(end_dim, input.ndim)
    if s > e:
        raise op_error("flatten", "start_dim cannot come after end_dim")
    shape = tuple(input.shape)
    new = shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:]
    return P.reshape(input, shape=new) if new != shape else input


def unflatten(input, dim, sizes):
    d = _norm_dim(dim, input.ndim)
    shape = tuple(input.shape)
    sizes = _infer_shape(tuple(sizes), shape[d], "unflatten")
    return P.reshape(input, shape=shape[:d] + sizes + shape[d + 1:])


def squeeze(input, dim=None):
    shape = tuple(input.shape)
    if dim is None:
        axes = tuple(i for i, s in enumerate(shape) if s == 1)
    else:
        axes = tuple(a for a in _axes(dim if isinstance(dim, (tuple, list)) else (dim,),
                                      input.ndim) if input.ndim and shape[a] == 1)
    if not axes:
        return input if STATE.tracer is None and not input.requires_grad else \
            P.reshape(input, shape=shape)
    return P.reshape(input, shape=tuple(s for i, s in enumerate(shape) if i not in axes))


def unsqueeze(input, dim):
    d = _norm_dim(dim, input.ndim + 1)
    shape = tuple(input.shape)
    return P.reshape(input, shape=shape[:d] + (1,) + shape[d:])


def permute(input, *dims):
    dims = _shape_arg(dims)
    if len(dims) != input.ndim:
        raise op_error("permute", f"number of dims don't match in permute: input has "
                       f"{input.ndim} dims, got {len(dims)}")
    perm = tuple(_norm_dim(d, input.ndim) for d in dims)
    if len(set(perm)) != len(perm):
        raise op_error("permute", f"repeated dim in permute: {list(dims)}")
    return P.permute(input, perm=perm)


def transpose(input, dim0, dim1):
    if input.ndim < 2 and input.ndim == 0:
        return input
    a, b = _norm_dim(dim0, input.ndim), _norm_dim(dim1, input.ndim)
    perm = list(range(input.ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return P.permute(input, perm=tuple(perm))


swapaxes = swapdims = transpose


def t(input):
    if input.ndim > 2:
        raise op_error("t", f"t() expects a tensor with <= 2 dimensions, but self is "
                       f"{input.ndim}D")
    return transpose(input, 0, 1) if input.ndim == 2 else input


def movedim(input, source, destination):
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    src = [_norm_dim(s, input.ndim) for s in src]
    dst = [_norm_dim(d, input.ndim) for d in dst]
    rest = [i for i in range(input.ndim) if i not in src]
    perm = [None] * input.ndim
    for s, d in zip(src, dst):
        perm[d] = s
    it = iter(rest)
    perm = [p if p is not None else next(it) for p in perm]
    return P.permute(input, perm=tuple(perm))


moveaxis = movedim


def expand(input, *sizes):
    sizes = _shape_arg(sizes)
    shape = tuple(input.shape)
    lead = len(sizes) - len(shape)
    if lead < 0:
        raise op_error("expand", f"the number of sizes provided ({len(sizes)}) must be greater "
                       f"or equal to the number of dimensions in the tensor ({len(shape)})")
    target = tuple(shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(sizes))
    if target == shape:
        return input if STATE.tracer is None and not input.requires_grad else \
            P.expand(input, shape=target)
    return P.expand(input, shape=target)


def expand_as(input, other):
    return expand(input, tuple(other.shape))


def broadcast_to(input, shape):
    return expand(input, tuple(shape))


def broadcast_tensors(*tensors):
    shape = _broadcast("broadcast_tensors", *(tuple(t.shape) for t in tensors))
    return tuple(expand(t, shape) for t in tensors)


def repeat(input, *sizes):
    sizes = _shape_arg(sizes)
    if len(sizes) < input.ndim:
        raise op_error("repeat", "Number of dimensions of repeat dims can not be smaller than "
                       "number of dimensions of tensor")
    x = reshape(input, (1,) * (len(sizes) - input.ndim) + tuple(input.shape))
    shape = tuple(x.shape)
    # each dim d becomes (r, d): expand a new axis in front of it, then merge the pair
    inter = tuple(v for r, d in zip(sizes, shape) for v in (1, d))
    target = tuple(v for r, d in zip(sizes, shape) for v in (r, d))
    out = P.expand(P.reshape(x, shape=inter), shape=target)
    return P.reshape(out, shape=tuple(r * d for r, d in zip(sizes, shape)))


def tile(input, dims):
    dims = tuple(dims)
    if len(dims) < input.ndim:
        dims = (1,) * (input.ndim - len(dims)) + dims
    return repeat(input, dims)


def repeat_interleave(input, repeats, dim=None):
    if dim is None:
        input, dim = reshape(input, (-1,)), 0
    d = _norm_dim(dim, input.ndim)
    if isinstance(repeats, Tensor):
        idx = np.repeat(np.arange(input.shape[d]), repeats.tolist())
        return index_select(input, d, input.new_tensor(idx, dtype=dt.int64))
    shape = tuple(input.shape)
    x = unsqueeze(input, d + 1)
    x = expand(x, shape[:d + 1] + (repeats,) + shape[d + 1:])
    return reshape(x, shape[:d] + (shape[d] * repeats,) + shape[d + 1:])


def cat(tensors, dim=0):
    tensors = [t for t in tensors]
    if not tensors:
        raise op_error("cat", "expected a non-empty list of Tensors")
    # PyTorch skips legacy 1-D empty tensors and promotes dtypes
    def legacy_empty(t):
        return t.ndim == 1 and t.shape[0] == 0
    ref = next((t for t in tensors if not legacy_empty(t)), tensors[0])
    nonempty = [t for t in tensors if not legacy_empty(t) or ref.ndim == 1]
    d = _norm_dim(dim, nonempty[0].ndim)
    dtype = nonempty[0].dtype
    for t in nonempty[1:]:
        dtype = dt.promote(dtype, t.dtype)
    nonempty = [t if t.dtype is dtype else P.cast(t, dtype=dtype) for t in nonempty]
    for t in nonempty[1:]:
        if t.ndim != nonempty[0].ndim:
            raise op_error("cat", f"Tensors must have same number of dimensions: got "
                           f"{nonempty[0].ndim} and {t.ndim}")
    if len(nonempty) == 1:
        return nonempty[0].clone()
    return P.cat(*nonempty, axis=d)


concat = concatenate = cat


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise op_error("stack", "expected a non-empty list of Tensors")
    shape = tuple(tensors[0].shape)
    for t in tensors[1:]:
        if tuple(t.shape) != shape:
            raise op_error("stack", f"stack expects each tensor to be equal size, but got "
                           f"{list(shape)} at entry 0 and {list(t.shape)} at another entry")
    d = _norm_dim(dim, len(shape) + 1)
    return cat([unsqueeze(t, d) for t in tensors], d)


def hstack(tensors):
    tensors = list(tensors)
    return cat(tensors, 0 if tensors[0].ndim == 1 else 1)


def vstack(tensors):
    return cat([t if t.ndim >= 2 else reshape(t, (1, -1)) for t in tensors], 0)


def narrow(input, dim, start, length):
    d = _norm_dim(dim, input.ndim)
    start = int(start) + (input.shape[d] if int(start) < 0 else 0)
    return _slice_dim(input, d, start, start + int(length))


def _slice_dim(input, d, start, stop, step=1):
    shape = tuple(input.shape)
    if not 0 <= start <= stop <= shape[d]:
        raise op_error("narrow", f"start ({start}) + length ({stop - start}) exceeds dimension "
                       f"size ({shape[d]}).", IndexError)
    starts = tuple(start if i == d else 0 for i in range(len(shape)))
    stops = tuple(stop if i == d else s for i, s in enumerate(shape))
    steps = tuple(step if i == d else 1 for i in range(len(shape)))
    return P.slice(input, starts=starts, stops=stops, steps=steps)


def split(tensor, split_size_or_sections, dim=0):
    d = _norm_dim(dim, tensor.ndim)
    n = tensor.shape[d]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size <= 0 and n:
            raise op_error("split", f"split_size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else []) if n else [0]
    else:
        sizes = list(split_size_or_sections)
        if _py_sum(sizes) != n:
            raise op_error("split", f"split_with_sizes expects split_sizes to sum exactly to "
                           f"{n} (input tensor's size at dimension {d}), but got split_sizes="
                           f"{sizes}")
    out, at = [], 0
    for s in sizes:
        out.append(_slice_dim(tensor, d, at, at + s))
        at += s
    return tuple(out)


def chunk(input, chunks, dim=0):
    d = _norm_dim(dim, input.ndim)
    size = -(-input.shape[d] // chunks) if input.shape[d] else 1
    return split(input, _py_max(size, 1), d)


def tensor_split(input, indices_or_sections, dim=0):
    d = _norm_dim(dim, input.ndim)
    n = input.shape[d]
    if isinstance(indices_or_sections, int):
        k = indices_or_sections
        sizes = [n // k + 1] * (n % k) + [n // k] * (k - n % k)
    else:
        bounds = [0] + list(indices_or_sections) + [n]
        sizes = [_py_max(0, b - a) for a, b in zip(bounds, bounds[1:])]
    return split(input, sizes, d)


def unbind(input, dim=0):
    d = _norm_dim(dim, input.ndim)
    return tuple(squeeze(_slice_dim(input, d, i, i + 1), d) for i in range(input.shape[d]))


def select(input, dim, index):
    d = _norm_dim(dim, input.ndim)
    n = input.shape[d]
    i = int(index)
    if not -n <= i < n:
        raise op_error("select", f"index {i} is out of bounds for dimension {d} with size {n}",
                       IndexError)
    i %= n
    return squeeze(_slice_dim(input, d, i, i + 1), d)


def flip(input, dims):
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    axes = tuple(_norm_dim(a, input.ndim) for a in dims)
    return P.flip(input, axes=axes) if input.ndim else input.clone()


def fliplr(input):
    return flip(input, (1,))


def flipud(input):
    return flip(input, (0,))


def roll(input, shifts, dims=None):
    if dims is None:
        return reshape(roll(reshape(input, (-1,)), shifts, 0), tuple(input.shape))
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    out = input
    for s, d in zip(shifts, dims):
        d = _norm_dim(d, input.ndim)
        n = input.shape[d]
        if n == 0:
            continue
        s %= n
        if s:
            out = cat([_slice_dim(out, d, n - s, n), _slice_dim(out, d, 0, n - s)], d)
    return out


def pad(input, pad, mode="constant", value=None):
    """`F.pad`: pairs of (before, after) padding from the last dim backwards."""
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise op_error("pad", f"Padding length must be divisible by 2 and at most twice the "
                       f"number of dims ({input.ndim}); got {len(pad)}")
    pairs = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        pairs[input.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    x = input
    # negative padding crops: slice first, then pad with the positive parts
    if _py_any(lo < 0 or hi < 0 for lo, hi in pairs):
        shape = tuple(x.shape)
        x = P.slice(x, starts=tuple(_py_max(0, -lo) for lo, hi in pairs),
                    stops=tuple(s - _py_max(0, -hi) for s, (lo, hi) in zip(shape, pairs)),
                    steps=(1,) * x.ndim)
        pairs = [(_py_max(0, lo), _py_max(0, hi)) for lo, hi in pairs]
    if mode == "constant":
        return P.pad(x, pads=tuple(pairs), value=0.0 if value is None else value)
    if mode in ("reflect", "replicate", "circular"):
        for d, (lo, hi) in enumerate(pairs):
            if lo == 0 and hi == 0:
                continue
            n = x.shape[d]
            parts = []
            if mode == "reflect":
                if lo:
                    parts.append(flip(_slice_dim(x, d, 1, lo + 1), (d,)))
                parts.append(x)
                if hi:
                    parts.append(flip(_slice_dim(x, d, n - hi - 1, n - 1), (d,)))
            elif mode == "replicate":
                shape_lo = tuple(lo if i == d else s for i, s in enumerate(x.shape))
                shape_hi = tuple(hi if i == d else s for i, s in enumerate(x.shape))
                if lo:
                    parts.append(expand(_slice_dim(x, d, 0, 1), shape_lo))
                parts.append(x)
                if hi:
                    parts.append(expand(_slice_dim(x, d, n - 1, n), shape_hi))
            else:
                if lo:
                    parts.append(_slice_dim(x, d, n - lo, n))
                parts.append(x)
                if hi:
                    parts.append(_slice_dim(x, d, 0, hi))
            x = cat(parts, d)
        return x
    raise op_error("pad", f"unsupported padding mode {mode!r}", NotImplementedError)


def _py_any(it):
    return builtins.any(it)


def contiguous(input, memory_format=None):
    """`input` itself when its memory is row-major already, else a row-major copy (so `view`,
    which never copies, works on the result as in PyTorch)."""
    if input._data.flags.c_contiguous:
        return input
    out = P.cast(input, dtype=input.dtype)      # a copy autograd and the tracer see
    out._data = out.device.xp.ascontiguousarray(out._data)
    return out


def clone(input, *, memory_format=None):
    return P.cast(input, dtype=input.dtype)


def _tri_mask(input, diagonal, upper):
    rows, cols = input.shape[-2], input.shape[-1]
    r = P.reshape(arange(rows, device=input.device), shape=(rows, 1))
    c = P.reshape(arange(cols, device=input.device), shape=(1, cols))
    return P.ge(c - r, diagonal) if upper else P.le(c - r, diagonal)


def tril(input, diagonal=0):
    return P.where(_tri_mask(input, diagonal, False), input, 0)


def triu(input, diagonal=0):
    return P.where(_tri_mask(input, diagonal, True), input, 0)


def diagonal(input, offset=0, dim1=0, dim2=1):
    d1, d2 = _norm_dim(dim1, input.ndim), _norm_dim(dim2, input.ndim)
    x = movedim(input, (d1, d2), (-2, -1))
    rows, cols = x.shape[-2], x.shape[-1]
    n = _py_max(0, _py_min(rows, cols - offset) if offset >= 0 else _py_min(rows + offset, cols))
    start = offset if offset >= 0 else -offset * cols
    flat = reshape(x, tuple(x.shape[:-2]) + (rows * cols,))
    if n == 0:
        return _slice_dim(flat, flat.ndim - 1, 0, 0)
    return _slice_dim(flat, flat.ndim - 1, start, start + (n - 1) * (cols + 1) + 1, cols + 1)


def diag(input, diagonal_=0):
    if input.ndim == 1:
        n = input.shape[0] + _py_abs(diagonal_)
        out = zeros((n, n), dtype=input.dtype, device=input.device)
        idx = np.arange(input.shape[0])
        rows = idx + _py_max(0, -diagonal_)
        cols = idx + _py_max(0, diagonal_)
        flat = input.new_tensor(rows * n + cols, dtype=dt.int64)
        return reshape(P.index_put(reshape(out, (-1,)), flat, input, axis=0), (n, n))
    return diagonal(input, diagonal_)


def trace(input):
    return sum(diagonal(input))


# ----------------------------------------------------------------------------- indexing

def index_select(input, dim, index):
    return select_rows(input, dim, index, "index_select")


def select_rows(input, dim, index, op: str):
    """index_select under the name of the op the user called (`embedding` looks rows up this
    way): a negative or too large index is PyTorch's IndexError "index out of range in self"
    (index_select does not count negative indices from the end)."""
    d = _norm_dim(dim, input.ndim)
    if index.ndim > 1:
        raise op_error(op, "index_select(): Index is supposed to be a vector", IndexError)
    index = _wrap_index(index, input.shape[d], op, IndexError, dim=d, negative=False,
                        what="index out of range in self")
    return P.take(input, index, axis=d)


def _wrap_index(index: Tensor, n: int, op: str = "index", kind: type = IndexError, *,
                dim: int | None = None, negative: bool = True, what: str = "") -> Tensor:
    """`index` checked against a dim of size `n`: out-of-range values raise `kind`, naming
    `op`, the first offending value and the size. With `negative`, indices in [-n, 0) count
    from the end, as in Python (tensor indexing, take, index_fill); without, they are out of
    range (gather, scatter, index_select, embedding), as in PyTorch. Eager only, one min and
    one max per call. Traced, the check is a graph node (`check_index`, which the executors run
    on every replay), since a trace cannot read index values into Python."""
    if index.dtype is not dt.int64 and index.dtype is not dt.int32:
        raise op_error(op, f"tensors used as indices must be long, int or bool tensors, "
                       f"got {index.dtype.name}", IndexError)
    if STATE.tracer is None:
        data = index._data
        if not data.size:
            return index
        low, high = data.min(), data.max()
        lowest = -n if negative else 0
        if low < lowest or high >= n:
            flat = data.reshape(-1)
            bad = int(flat[((flat < lowest) | (flat >= n)).argmax()])   # the first, as torch
            where = f"a tensor of {n} elements" if dim is None else \
                f"dimension {dim} with size {n}"
            raise op_error(op, (f"{what}: " if what else "") +
                           f"index {bad} is out of bounds for {where}", kind)
        if low >= 0:
            return index
    else:                             # a replay checks the indices it is given, as eager does
        index = P.check_index(index, size=n, op=op, kind=kind.__name__, negative=negative,
                              ignore=None)
    if not negative:
        return index
    return P.where(P.lt(index, 0), index + n, index)


def _gather_positions(input_shape, dim, index, op="gather", checked=False):
    """Flat positions into `input` for gather/scatter: index along `dim`, arange elsewhere.
    `checked`: the caller has bounds-checked `index` already."""
    strides = [math.prod(input_shape[i + 1:]) for i in range(len(input_shape))]
    if checked:
        lin = index * strides[dim]
    else:
        lin = _wrap_index(index, input_shape[dim], op, RuntimeError, dim=dim,
                          negative=False) * strides[dim]
    for i, n in enumerate(index.shape):
        if i == dim:
            continue
        if n > input_shape[i]:
            raise op_error(op, f"Size does not match at dimension {i} expected index "
                           f"{list(index.shape)} to be smaller than self {list(input_shape)} "
                           f"apart from dimension {dim}", RuntimeError)
        shape = [1] * index.ndim
        shape[i] = n
        lin = lin + P.reshape(arange(n, device=index.device), shape=tuple(shape)) * strides[i]
    return lin


def gather(input, dim, index, *, sparse_grad=False):
    return _gather(input, dim, index, "gather")


def _gather(input, dim, index, op, checked=False):
    """gather under the name of the op the user called; `checked`: `index` is known to be in
    [0, size) already (nll_loss checked its targets)."""
    d = _norm_dim(dim, input.ndim)
    if index.ndim != input.ndim:
        raise op_error(op, f"Index tensor must have the same number of dimensions as "
                       f"input tensor ({index.ndim} vs {input.ndim})")
    lin = _gather_positions(tuple(input.shape), d, index, op, checked=checked)
    return P.take(reshape(input, (-1,)), lin, axis=0)


def _scatter(input, dim, index, src, prim, op):
    d = _norm_dim(dim, input.ndim)
    if isinstance(src, Tensor) and src.dtype is not input.dtype:
        src = src.to(input.dtype)
    if not isinstance(src, Tensor):
        src = full(tuple(index.shape), src, dtype=input.dtype, device=input.device)
    elif tuple(src.shape) != tuple(index.shape):
        src = P.slice(src, starts=(0,) * src.ndim, stops=tuple(index.shape),
                      steps=(1,) * src.ndim)
    if index.ndim != input.ndim:
        raise op_error(op, f"Index tensor must have the same number of dimensions as "
                       f"self tensor ({index.ndim} vs {input.ndim})")
    lin = _gather_positions(tuple(input.shape), d, index, op)
    flat = prim(reshape(input, (-1,)), reshape(lin, (-1,)), reshape(src, (-1,)), axis=0)
    return reshape(flat, tuple(input.shape))


def scatter(input, dim, index, src=None, *, value=None, reduce=None):
    if reduce not in (None, "add"):     # not ignored: that would write instead of reducing
        raise op_error("scatter", f"reduce={reduce!r} is not supported in kiln (only 'add'); "
                       "use scatter_add, or scatter into a copy and combine", NotImplementedError)
    if reduce == "add":
        return _scatter(input, dim, index, src if src is not None else value, P.index_add,
                        "scatter")
    return _scatter(input, dim, index, src if src is not None else value, P.index_put,
                    "scatter")


def scatter_add(input, dim, index, src):
    return _scatter(input, dim, index, src, P.index_add, "scatter_add")


def index_add(input, dim, index, source, *, alpha=1):
    d = _norm_dim(dim, input.ndim)
    src = source * alpha if alpha != 1 else source
    index = _wrap_index(index, input.shape[d], "index_add", RuntimeError, dim=d, negative=False)
    return P.index_add(input, index, src.to(input.dtype), axis=d)


def index_fill(input, dim, index, value):
    d = _norm_dim(dim, input.ndim)
    shape = tuple(input.shape)
    src = full(shape[:d] + tuple(index.shape) + shape[d + 1:], value, dtype=input.dtype,
               device=input.device)
    return P.index_put(input, _wrap_index(index, shape[d], "index_fill", dim=d), src, axis=d)


def index_copy(input, dim, index, source):
    d = _norm_dim(dim, input.ndim)
    index = _wrap_index(index, input.shape[d], "index_copy", dim=d, negative=False)
    return P.index_put(input, index, source.to(input.dtype), axis=d)


def masked_fill(input, mask, value):
    if isinstance(value, Tensor):
        value = value.to(input.dtype)
    elif input.dtype.category != dt.FLOAT and isinstance(value, float):
        value = int(value)
    if mask.dtype is not dt.bool_:
        raise op_error("masked_fill", f"masked_fill_ only supports boolean masks, but got mask "
                       f"with dtype {mask.dtype.name}")
    return P.where(mask, value, input)


def masked_select(input, mask):
    input, mask = broadcast_tensors(input, mask)
    return getitem(input, mask)


def take(input, index):
    return P.take(reshape(input, (-1,)), _wrap_index(index, input.numel(), "take"), axis=0)


def take_along_dim(input, indices, dim=None):
    if dim is None:
        return take(input, indices)
    d = _norm_dim(dim, input.ndim)
    # every dim but `dim` broadcasts between input and indices
    a, b = list(input.shape), list(indices.shape)
    a[d] = b[d] = 1
    common = _broadcast("take_along_dim", tuple(a), tuple(b))
    input = expand(input, common[:d] + (input.shape[d],) + common[d + 1:])
    indices = expand(indices, common[:d] + (indices.shape[d],) + common[d + 1:])
    return _gather(input, d, indices, "take_along_dim")


@composite
def one_hot(tensor, num_classes=-1):
    if tensor.dtype is not dt.int64:
        raise op_error("one_hot", "one_hot is only applicable to index tensor of type int64",
                       RuntimeError)
    if STATE.tracer is None and tensor._data.size:
        # a class outside [0, num_classes) would give a row of zeros: PyTorch refuses it
        low, high = int(tensor._data.min()), int(tensor._data.max())
        if low < 0:
            raise op_error("one_hot", f"Class values must be non-negative. Got {low} in a "
                           f"tensor of shape {list(tensor.shape)}")
        if num_classes != -1 and high >= num_classes:
            raise op_error("one_hot", f"Class values must be smaller than num_classes. Got "
                           f"class {high} with num_classes={num_classes}")
    if num_classes == -1:
        num_classes = int(tensor.max().item()) + 1 if tensor.numel() else 0
    classes = arange(num_classes, device=tensor.device)
    return P.cast(P.eq(unsqueeze(tensor, -1), classes), dtype=dt.int64)


def nonzero(input, *, as_tuple=False):
    data = input._read("nonzero()")
    xp = input.device.xp
    idx = xp.stack(xp.nonzero(data), axis=1) if data.ndim else xp.zeros(
        (int(bool(data)), 0), dtype=np.int64)
    out = Tensor._make(idx.astype(np.int64), dt.int64, input.device)
    if as_tuple:
        if not data.ndim:      # a 0-d input has one position, index 0, when it is nonzero
            return (zeros(out.shape[0], dtype=dt.int64, device=out.device),)
        return tuple(out[:, i] for i in range(out.shape[1]))
    return out


def argwhere(input):
    return nonzero(input)


def _normalize_key(key, ndim):
    """Split an index into per-dim items, expanding `...`; None stays as 'new axis'."""
    if not isinstance(key, tuple):
        key = (key,)
    items = []
    for k in key:
        if isinstance(k, (list, np.ndarray)) or (isinstance(k, Tensor)):
            items.append(k)
        else:
            items.append(k)
    consumed = 0
    for k in items:
        if k is None or k is Ellipsis:
            continue
        if isinstance(k, Tensor) and k.dtype is dt.bool_:
            consumed += k.ndim
        elif isinstance(k, (list, np.ndarray)) and np.asarray(k).dtype == np.bool_:
            consumed += np.asarray(k).ndim
        else:
            consumed += 1
    if consumed > ndim:
        raise op_error("index", f"too many indices for tensor of dimension {ndim}", IndexError)
    if _py_sum(1 for k in items if k is Ellipsis) > 1:
        raise op_error("index", "an index can only have a single ellipsis ('...')", IndexError)
    if Ellipsis in [k for k in items if not isinstance(k, (Tensor, list, np.ndarray))]:
        at = next(i for i, k in enumerate(items) if k is Ellipsis)
        items = items[:at] + [slice(None)] * (ndim - consumed) + items[at + 1:]
    else:
        items = items + [slice(None)] * (ndim - consumed)
    return items


def _basic_getitem(input, key):
    """`input[key]` for the common keys, made of in-range ints and slices with positive int
    steps (at most one per dim), as one slice (and, for int items, one reshape); None for any
    other key, which `getitem` then handles (and reports errors for) in general."""
    shape = input._data.shape
    if type(key) is slice and shape and (key.step is None or type(key.step) is int
                                         and key.step > 0):
        # x[a:b:s], the most common key: one slice of dim 0
        a, b, step = key.indices(shape[0])
        b = _py_max(a, b)
        if a == 0 and b == shape[0] and step == 1:
            return input
        rest = len(shape) - 1
        return P.slice(input, starts=(a,) + (0,) * rest, stops=(b,) + shape[1:],
                       steps=(step,) + (1,) * rest)
    items = key if type(key) is tuple else (key,)
    if len(items) > len(shape):
        return None
    starts, stops, steps, out_shape = [], [], [], []
    whole = True                # every item so far takes its whole dim
    for k, n in zip(items, shape):
        if type(k) is slice:
            step = k.step
            if step is not None and (type(step) is not int or step <= 0):
                return None
            a, b, step = k.indices(n)
            b = _py_max(a, b)
            out_shape.append((b - a + step - 1) // step)
        elif type(k) is int and -n <= k < n:
            a = k % n
            b, step = a + 1, 1          # the dim is dropped: nothing goes into out_shape
        else:
            return None
        if a != 0 or b != n or step != 1:
            whole = False
        starts.append(a)
        stops.append(b)
        steps.append(step)
    rest = shape[len(items):]       # dims the key does not name are taken whole
    x = input
    if not whole:
        x = P.slice(x, starts=tuple(starts) + (0,) * len(rest), stops=tuple(stops) + rest,
                    steps=tuple(steps) + (1,) * len(rest))
    if len(out_shape) != len(items):
        x = P.reshape(x, shape=tuple(out_shape) + rest)
    return x


def getitem(input, key):
    """`tensor[key]`: ints, slices with steps, None, ..., integer tensors and boolean masks."""
    x = _basic_getitem(input, key)
    if x is not None:
        return x
    items = _normalize_key(key, input.ndim)
    x = input
    shape = tuple(input.shape)
    starts, stops, steps, out_shape = [], [], [], []
    advanced = []          # (position in the sliced result, index tensor)
    dim = 0
    for k in items:
        if k is None:
            out_shape.append(1)
            continue
        if isinstance(k, (list, range, np.ndarray)):     # x[range(n), y], as in PyTorch
            k = input.new_tensor(np.asarray(k))
            if k.dtype.is_floating_point and k.numel() == 0:
                k = k.to(dt.int64)
        if isinstance(k, Tensor):
            if k.device is not input.device and k.device.type == "cpu":
                k = k.to(input.device)   # as PyTorch: indices on the CPU for a tensor anywhere
            if k.dtype is dt.bool_ and k.ndim == 0:
                # a 0-d mask adds a dim of size 1 and keeps it (True) or empties it (False)
                out_shape.append(1)
                advanced.append((len(out_shape) - 1, zeros(int(bool(k)), dtype=dt.int64,
                                                           device=input.device)))
                continue
            if k.dtype is dt.bool_:
                if tuple(k.shape) != shape[dim:dim + k.ndim]:
                    raise op_error("index", f"The shape of the mask {list(k.shape)} at index "
                                   f"{dim} does not match the shape of the indexed tensor "
                                   f"{list(shape[dim:dim + k.ndim])}", IndexError)
                nz = nonzero(k, as_tuple=False)
                for j in range(k.ndim):
                    starts.append(0)
                    stops.append(shape[dim])
                    steps.append(1)
                    advanced.append((len(out_shape), nz[:, j] if k.ndim else nz[:, 0]))
                    out_shape.append(shape[dim])
                    dim += 1
                continue
            if k.dtype.is_floating_point:
                raise op_error("index", "tensors used as indices must be long, int or bool "
                               "tensors", IndexError)
            starts.append(0)
            stops.append(shape[dim])
            steps.append(1)
            advanced.append((len(out_shape), k))
            out_shape.append(shape[dim])
            dim += 1
            continue
        if isinstance(k, slice):
            n = shape[dim]
            step = 1 if k.step is None else int(k.step)
            if step <= 0:
                raise op_error("index", "step must be greater than zero", ValueError)
            a, b, _ = slice(k.start, k.stop, step).indices(n)
            b = _py_max(a, b)
            starts.append(a)
            stops.append(b)
            steps.append(step)
            out_shape.append((b - a + step - 1) // step)
            dim += 1
            continue
        if isinstance(k, bool) or k is True or k is False:
            raise op_error("index", "indexing with a Python bool is not supported", IndexError)
        try:
            i = int(k.__index__() if isinstance(k, Tensor) else k)
        except (TypeError, AttributeError):
            raise op_error("index", f"only integers, slices (`:`), ellipsis (`...`), None and "
                           f"long or byte Variables are valid indices (got "
                           f"{type(k).__name__})", IndexError) from None
        n = shape[dim]
        if not -n <= i < n:
            raise op_error("index", f"index {i} is out of bounds for dimension {dim} with size "
                           f"{n}", IndexError)
        i %= n
        starts.append(i)
        stops.append(i + 1)
        steps.append(1)
        out_shape.append(None)      # dropped after slicing
        dim += 1
    if (tuple(starts), tuple(stops), tuple(steps)) != ((0,) * len(shape), shape,
                                                      (1,) * len(shape)):
        x = P.slice(x, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    # the shape with ints dropped and None added; advanced positions refer into it
    keep = [s for s in out_shape if s is not None]
    positions = {}
    at = 0
    for i, s in enumerate(out_shape):
        if s is not None:
            positions[i] = at
            at += 1
    if tuple(keep) != tuple(x.shape):
        x = P.reshape(x, shape=tuple(keep))
    if not advanced:
        return x
    return _advanced_index(x, [(positions[p], idx) for p, idx in advanced])


def _advanced_index(x, advanced):
    """Integer-tensor indexing (NumPy rules) over the dims named in `advanced`."""
    dims = [d for d, _ in advanced]
    shape = tuple(x.shape)
    if len(advanced) == 1:
        d, idx = advanced[0]
        return P.take(x, _wrap_index(idx, shape[d], dim=d), axis=d)
    idx_shape = _broadcast("index", *(tuple(i.shape) for _, i in advanced))
    # move the indexed dims to the front, flatten them into one, and take by linear position
    rest = [i for i in range(len(shape)) if i not in dims]
    moved = P.permute(x, perm=tuple(dims + rest)) if dims + rest != list(range(len(shape))) else x
    lin = None
    stride = 1
    for d, idx in reversed(advanced):
        term = _wrap_index(idx, shape[d], dim=d)
        term = term * stride if stride != 1 else term
        lin = term if lin is None else lin + term
        stride *= shape[d]
    lin = expand(lin, idx_shape)
    flat = P.reshape(moved, shape=(stride,) + tuple(shape[i] for i in rest))
    out = P.take(flat, lin, axis=0)
    adjacent = dims == list(range(dims[0], dims[0] + len(dims)))
    if adjacent and dims[0] != 0:
        # NumPy keeps the result dims where the (adjacent) indexed dims were
        k = len(idx_shape)
        before = list(range(k, k + dims[0]))
        perm = before + list(range(k)) + list(range(k + dims[0], out.ndim))
        out = P.permute(out, perm=tuple(perm))
    return out


def _flat_positions(input, key):
    """Flat element positions that `input[key]` selects, shaped like `input[key]`."""
    positions = P.reshape(arange(input.numel(), device=input.device), shape=tuple(input.shape))
    return getitem(positions, key)


def index_put(input, indices, values, accumulate=False):
    pos = _flat_positions(input, tuple(indices))
    return _put_at(input, pos, values, P.index_add if accumulate else P.index_put)


def _put_at(input, pos, values, prim):
    if not isinstance(values, Tensor):
        values = full((), values, dtype=input.dtype, device=input.device)
    elif values.dtype is not input.dtype:
        values = values.to(input.dtype)
    values = expand(values, tuple(pos.shape))
    flat = prim(reshape(input, (-1,)), reshape(pos, (-1,)), reshape(values, (-1,)), axis=0)
    return reshape(flat, tuple(input.shape))


def setitem_functional(input, key, value):
    """The value of `input` after `input[key] = value`, as a new tensor (for autograd/tracing)."""
    return _put_at(input, _flat_positions(input, key), value, P.index_put)


# ----------------------------------------------------------------------------- matmul

def matmul(input, other):
    a, b = input, other
    if a.ndim == 2 and b.ndim == 2 and a.dtype is b.dtype and \
            a._data.shape[1] == b._data.shape[0]:
        return P.matmul(a, b)     # the common case, which every check below lets through
    if a.ndim == 0 or b.ndim == 0:
        raise op_error("matmul", f"both arguments to matmul need to be at least 1D, but they "
                       f"are {a.ndim}D and {b.ndim}D")
    if a.dtype is not b.dtype:
        raise op_error("matmul", f"expected m1 and m2 to have the same dtype, but got: "
                       f"{a.dtype.name} != {b.dtype.name}")
    if a.ndim == 1 and b.ndim == 1:
        if a.shape[0] != b.shape[0]:
            raise op_error("matmul", f"inconsistent tensor size, expected tensor [{a.shape[0]}]"
                           f" and src [{b.shape[0]}] to have the same number of elements")
        return reshape(P.matmul(reshape(a, (1, -1)), reshape(b, (-1, 1))), ())
    if a.ndim == 1:
        return squeeze(matmul(unsqueeze(a, 0), b), -2)
    if b.ndim == 1:
        return squeeze(matmul(a, unsqueeze(b, -1)), -1)
    if a.shape[-1] != b.shape[-2]:
        whole = f" (operand shapes {list(a.shape)} and {list(b.shape)})" \
            if a.ndim > 2 or b.ndim > 2 else ""
        raise op_error("matmul", f"mat1 and mat2 shapes cannot be multiplied "
                       f"({'x'.join(map(str, a.shape[-2:]))} and "
                       f"{'x'.join(map(str, b.shape[-2:]))}){whole}")
    if b.ndim == 2 and a.ndim > 2:
        # (..., m, k) @ (k, n): one 2-D product over the flattened batch
        lead = tuple(a.shape[:-1])
        out = P.matmul(reshape(a, (-1, a.shape[-1])), b)
        return reshape(out, lead + (b.shape[-1],))
    if a.shape[:-2] == b.shape[:-2]:
        return P.matmul(a, b)
    try:
        batch = broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))
    except ShapeError:
        raise op_error("matmul", f"the batch dimensions {list(a.shape[:-2])} and "
                       f"{list(b.shape[:-2])} of operands of shapes {list(a.shape)} and "
                       f"{list(b.shape)} do not broadcast (each batch size must match or be 1)"
                       ) from None
    if tuple(a.shape[:-2]) != batch:
        a = P.expand(a, shape=batch + tuple(a.shape[-2:]))
    if tuple(b.shape[:-2]) != batch:
        b = P.expand(b, shape=batch + tuple(b.shape[-2:]))
    return P.matmul(a, b)


def mm(input, mat2):
    if input.ndim != 2 or mat2.ndim != 2:
        raise op_error("mm", f"self must be a matrix (got {input.ndim}-D and {mat2.ndim}-D)")
    return matmul(input, mat2)


def bmm(input, mat2):
    if input.ndim != 3 or mat2.ndim != 3:
        raise op_error("bmm", f"batch1 and batch2 must be 3D tensors (got {input.ndim}-D and "
                       f"{mat2.ndim}-D)")
    if input.shape[0] != mat2.shape[0]:
        raise op_error("bmm", f"batch1 and batch2 must have same number of batches, got "
                       f"{input.shape[0]} and {mat2.shape[0]} (shapes {list(input.shape)} and "
                       f"{list(mat2.shape)})")
    if input.shape[2] != mat2.shape[1]:
        raise op_error("bmm", f"Expected size for first two dimensions of batch2 tensor to be: "
                       f"[{input.shape[0]}, {input.shape[2]}] but got: [{mat2.shape[0]}, "
                       f"{mat2.shape[1]}] (shapes {list(input.shape)} and {list(mat2.shape)})")
    return matmul(input, mat2)


def mv(input, vec):
    return matmul(input, vec)


def dot(input, other):
    if input.ndim != 1 or other.ndim != 1:
        raise op_error("dot", f"1D tensors expected, but got {input.ndim}D and {other.ndim}D "
                       "tensors")
    return matmul(input, other)


inner = dot


def outer(input, vec2):
    return unsqueeze(input, 1) * unsqueeze(vec2, 0)


ger = outer


def addmm(input, mat1, mat2, *, beta=1, alpha=1):
    prod_ = mm(mat1, mat2)
    return (input * beta if beta != 1 else input) + (prod_ * alpha if alpha != 1 else prod_)


def baddbmm(input, batch1, batch2, *, beta=1, alpha=1):
    prod_ = bmm(batch1, batch2)
    return (input * beta if beta != 1 else input) + (prod_ * alpha if alpha != 1 else prod_)


@composite
def einsum(equation, *operands):
    """Einstein summation for up to two operands, lowered to permute, reshape, mul and matmul."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise op_error("einsum", f"{len(terms)} operand terms but {len(operands)} operands")
    if not _:
        counts = {}
        for c in "".join(terms):
            counts[c] = counts.get(c, 0) + 1
        rhs = "".join(sorted(c for c, n in counts.items() if n == 1))
    # multiply by broadcasting every operand into the union of labels, then sum the rest
    labels = []
    for term in terms:
        for c in term:
            if c not in labels:
                labels.append(c)
    sizes = {}
    for term, op in zip(terms, operands):
        for c, n in zip(term, op.shape):
            sizes[c] = _py_max(sizes.get(c, 1), n)
    if len(operands) == 2 and set(rhs) <= set(labels):
        return _einsum_pair(terms, rhs, operands, sizes)
    product = None
    for term, op in zip(terms, operands):
        aligned = _align(op, term, labels)
        product = aligned if product is None else product * aligned
    summed = [i for i, c in enumerate(labels) if c not in rhs]
    out = sum(product, tuple(summed)) if summed else product
    kept = [c for c in labels if c in rhs]
    return permute(out, tuple(kept.index(c) for c in rhs)) if kept != list(rhs) else out


def _align(op, term, labels):
    """Permute and reshape an operand so its dims follow `labels` (size 1 where absent)."""
    if len(set(term)) != len(term):
        raise op_error("einsum", f"repeated subscript in {term!r} (diagonals) is not supported")
    order = sorted(range(len(term)), key=lambda i: labels.index(term[i]))
    x = permute(op, tuple(order)) if order != list(range(len(term))) else op
    present = {c: op.shape[i] for i, c in enumerate(term)}
    return reshape(x, tuple(present.get(c, 1) for c in labels))


def _einsum_pair(terms, rhs, operands, sizes):
    ta, tb = terms
    a, b = operands
    batch = [c for c in ta if c in tb and c in rhs]
    contract = [c for c in ta if c in tb and c not in rhs]
    only_a = [c for c in ta if c not in tb]
    only_b = [c for c in tb if c not in ta]
    # labels that appear in one operand only and not in the output are summed out first
    for c in [c for c in only_a if c not in rhs]:
        a = sum(a, ta.index(c), keepdim=True)
    for c in [c for c in only_b if c not in rhs]:
        b = sum(b, tb.index(c), keepdim=True)
    free_a = [c for c in only_a if c in rhs]
    free_b = [c for c in only_b if c in rhs]

    def arrange(x, term, groups):
        order = [term.index(c) for g in groups for c in g]
        rest = [i for i in range(len(term)) if i not in order]   # summed-out singleton dims
        x = permute(x, tuple(order + rest))
        return reshape(x, tuple(math.prod(sizes[c] for c in g) for g in groups))

    A = arrange(a, ta, [batch, free_a, contract])
    B = arrange(b, tb, [batch, contract, free_b])
    out = matmul(A, B)
    out = reshape(out, tuple(sizes[c] for c in batch + free_a + free_b))
    order = batch + free_a + free_b
    return permute(out, tuple(order.index(c) for c in rhs)) if order != list(rhs) else out


@composite
def tensordot(a, b, dims=2):
    if isinstance(dims, int):
        dims_a, dims_b = list(range(a.ndim - dims, a.ndim)), list(range(dims))
    else:
        dims_a, dims_b = [list(d) if isinstance(d, (list, tuple)) else [d] for d in dims]
    free_a = [i for i in range(a.ndim) if i not in dims_a]
    free_b = [i for i in range(b.ndim) if i not in dims_b]
    k = math.prod(a.shape[i] for i in dims_a)
    A = reshape(permute(a, tuple(free_a + dims_a)), (-1, k))
    B = reshape(permute(b, tuple(dims_b + free_b)), (k, -1))
    return reshape(matmul(A, B), tuple(a.shape[i] for i in free_a) +
                   tuple(b.shape[i] for i in free_b))


# ----------------------------------------------------------------------------- softmax family

@composite
def softmax(input, dim=None, dtype=None):
    x = _floating(input if dtype is None else input.to(dtype))
    if x.dtype is dt.float16:
        return _narrowed(softmax(_widened(x), dim), dt.float16)
    if x.ndim == 0:
        return reshape(softmax(reshape(x, (1,)), 0), ())
    d = _norm_dim(-1 if dim is None else dim, x.ndim)
    # x, m, e and the sum share x's floating dtype, so the primitives need no promotion
    m = P.max(x, axes=(d,), keepdim=True).detach() if x._data.shape[d] else x
    e = P.exp(P.sub(x, m))
    return P.div(e, P.sum(e, axes=(d,), keepdim=True))


@composite
def log_softmax(input, dim=None, dtype=None):
    x = _floating(input if dtype is None else input.to(dtype))
    if x.dtype is dt.float16:
        return _narrowed(log_softmax(_widened(x), dim), dt.float16)
    if x.ndim == 0:
        return reshape(log_softmax(reshape(x, (1,)), 0), ())
    d = _norm_dim(-1 if dim is None else dim, x.ndim)
    shifted = x - P.max(x, axes=(d,), keepdim=True).detach() if x.shape[d] else x
    return shifted - P.log(P.sum(P.exp(shifted), axes=(d,), keepdim=True))


@composite
def softmin(input, dim=None, dtype=None):
    return softmax(-input, dim, dtype)


# ----------------------------------------------------------------------------- creation helpers
# (the public creation functions live in kiln.tracer.creation; these are used above)

def arange(*args, **kwargs):
    kwargs.setdefault("dtype", dt.int64)
    return creation.arange(*args, **kwargs)


def full(size, fill_value, *, dtype=None, device=None):
    return creation.full(size, fill_value, dtype=dtype, device=device)


def zeros(*size, dtype=None, device=None):
    return creation.zeros(*size, dtype=dtype, device=device)


def zeros_like(input, dtype=None):
    return creation.zeros_like(input, dtype=dtype)


def ones_like(input, dtype=None):
    return creation.ones_like(input, dtype=dtype)
