"""Elementwise arithmetic, comparison and logic (`add`, `div`, `clamp`, `eq`, `logical_and`,
`isnan`, `isclose`, ...). One module because the two call each other: `div` and `clamp` compare,
`isclose` takes `abs`."""

from __future__ import annotations

import math
import warnings

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer import creation
from kiln.tracer.errors import op_error, user_stacklevel
from kiln.tracer.functional.common import (_as_tensor, _binary, _floating, _number, _promoted,
                                           _py_abs,
                                           both_bool, ones_like, refuse_without_kernel,
                                           result_type, zeros_like)
from kiln.tracer.provenance import composite
from kiln.tracer.symbolic_number import SymbolicNumber
from kiln.tracer.tensor import STATE, Tensor
from kiln.tracer.unsigned import LIMITED as _LIMITED_UNSIGNED
from kiln.tracer.unsigned import check as _check_unsigned
from kiln.tracer.unsigned import refusal as _unsigned_refusal


# ----------------------------------------------------------------------------- arithmetic

def add(input, other, *scalar_first, alpha=1):
    if scalar_first:                # add(x, 2, y): PyTorch's deprecated overload
        (other,), alpha = scalar_first_overload("add", other, scalar_first, alpha)
    if alpha != 1:
        if _both_half(input, other):
            return _scaled_in_float32(P.add, input, other, alpha)
        other = _times_alpha("add", input, other, alpha)
    return _binary(P.add, input, other)


def _times_alpha(op: str, input, other, alpha):
    """alpha * other of add/sub, computed in the result's dtype as PyTorch does (a number
    stays a number: add(x, 2, alpha=3) adds 6; bool results take alpha as a bool)."""
    if isinstance(other, Tensor) and isinstance(input, Tensor) and \
            other.dtype is input.dtype and other.dtype.category == dt.FLOAT:
        return mul(other, alpha)      # the common case: an optimizer's p.add_(g, alpha=-lr)
    kind = result_type(input, other)
    if kind.category <= dt.INT and isinstance(alpha, float):
        raise op_error(op, f"For integral input tensors, argument alpha must not be a floating "
                       f"point number (alpha={alpha}, result {kind.name})")
    if not isinstance(other, Tensor):
        return _number(other) * alpha
    if kind is dt.bool_:
        return P.bitwise_and(other, bool(alpha))
    return mul(other if other.dtype is kind else P.cast(other, dtype=kind), alpha)


def _both_half(input, other) -> bool:
    """Whether both are CPU tensors of one of float16, bfloat16 (kiln's GPU kernels take
    float16 as it is)."""
    return isinstance(input, Tensor) and isinstance(other, Tensor) and \
        input.dtype in dt.HALF and other.dtype is input.dtype and \
        (input.dtype is dt.bfloat16 or input.device.type == "cpu" == other.device.type)


def _scaled_in_float32(prim, input: Tensor, other: Tensor, alpha) -> Tensor:
    """input + alpha * other (or -) on float16 (bfloat16) tensors as PyTorch's CPU kernel
    computes it: in float32, with alpha rounded to their dtype, the result rounded once (an
    optimizer's `p.add_(g, alpha=-lr)` would otherwise round g * alpha first)."""
    wide = prim(P.cast(input, dtype=dt.float32),
                P.mul(P.cast(other, dtype=dt.float32), dt.half_value(alpha, input.dtype)))
    return P.cast(wide, dtype=input.dtype)


def sub(input, other, *scalar_first, alpha=1):
    if scalar_first:                # sub(x, 2, y): PyTorch's deprecated overload
        (other,), alpha = scalar_first_overload("sub", other, scalar_first, alpha)
    if getattr(input, "dtype", None) is dt.bool_ or getattr(other, "dtype", None) is dt.bool_ \
            or type(input) is bool or type(other) is bool:
        _refuse_bool_subtraction(input, other)
    if alpha != 1:
        if _both_half(input, other):
            return _scaled_in_float32(P.sub, input, other, alpha)
        other = _times_alpha("sub", input, other, alpha)
    return _binary(P.sub, input, other)


# PyTorch's deprecated overloads that take the scalar first, `p.data.add_(-lr, p.grad.data)`
# in older tutorials: op -> (the scalar's keyword, how many tensors follow it)
_SCALAR_FIRST = {"add": ("alpha", 1), "sub": ("alpha", 1), "addcmul": ("value", 2),
                 "addcdiv": ("value", 2)}
_WARNED_SCALAR_FIRST = []        # PyTorch warns once per process, whichever op came first


def scalar_first_overload(op: str, scalar, tensors: tuple, keyword) -> tuple:
    """(tensors, scalar) of a call in a deprecated scalar-first overload: `add(x, 2, y)` is
    `add(x, y, alpha=2)`, `addcmul_(2, t1, t2)` is `addcmul_(t1, t2, value=2)`."""
    name, count = _SCALAR_FIRST[op.rstrip("_")]
    if len(tensors) != count or keyword != 1 or isinstance(scalar, Tensor) or \
            _number(scalar) is None:
        raise TypeError(f"{op}() received an invalid combination of arguments: the deprecated "
                        f"overload is {op}(Number {name}, {', '.join(['Tensor'] * count)}) "
                        f"with no {name}= keyword; write {op}(..., {name}=...) instead")
    if not _WARNED_SCALAR_FIRST:
        _WARNED_SCALAR_FIRST.append(op)
        old = ", ".join([f"Number {name}"] + [f"Tensor {t}" for t in _TENSOR_NAMES[count]])
        new = ", ".join([f"Tensor {t}" for t in _TENSOR_NAMES[count]] + [f"*, Number {name} = 1"])
        warnings.warn(f"This overload of {op} is deprecated:\n\t{op}({old})\nConsider using one "
                      f"of the following signatures instead:\n\t{op}({new})", UserWarning,
                      stacklevel=user_stacklevel())
    return tensors, scalar


_TENSOR_NAMES = {1: ("other",), 2: ("tensor1", "tensor2")}


def _refuse_bool_subtraction(input, other) -> None:
    """PyTorch refuses `-` with a bool tensor or a Python bool on either side."""
    bools = [type(x) is bool or isinstance(x, Tensor) and x.dtype is dt.bool_
             for x in (input, other)]
    if bools[0] and bools[1]:
        raise op_error("sub", "Subtraction, the `-` operator, with two bool tensors is not "
                       "supported. Use the `^` or `logical_xor()` operator instead.")
    if bools[0] or bools[1]:
        raise op_error("sub", "Subtraction, the `-` operator, with a bool tensor is not "
                       "supported. If you are trying to invert a mask, use the `~` or "
                       "`logical_not()` operator instead.")


def rsub(input, other, *, alpha=1):
    return sub(other, input, alpha=alpha)


def mul(input, other):
    return _binary(P.mul, input, other)


def div(input, other, *, rounding_mode=None):
    if rounding_mode == "floor":
        _refuse_integer_division_by_zero("div", input, other)
        # torch's floor_divide has no derivative; div(rounding_mode='floor') a zero one
        quotient = floor_divide(*(v.detach() if isinstance(v, Tensor) else v
                                  for v in (input, other)))
        return creation.zero_gradient(quotient, [v for v in (input, other)
                                                 if isinstance(v, Tensor)])
    if rounding_mode == "trunc":
        _refuse_bool_division("div_trunc", input, other)
        _refuse_integer_division_by_zero("div", input, other)
        a, b = _promoted(input, other)
        if a.dtype.is_floating_point if isinstance(a, Tensor) else b.dtype.is_floating_point:
            return trunc(P.div(a, b))
        q = P.floordiv(a, b)
        # floor rounds toward -inf; trunc toward 0 differs when the signs differ and r != 0
        fix = logical_and(ne(P.mod(a, b), 0), ne(_negative(a), _negative(b)))
        return P.where(fix, q + 1, q)    # fix is bool, q + 1 has q's dtype: where() adds nothing
    return _binary(P.div, input, other, float_only=True)


def _negative(x):
    """x < 0 of a tensor or a Python number (a number stays a Python bool)."""
    return lt(x, 0) if isinstance(x, Tensor) else x < 0


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


def _refuse_bool_division(op: str, input, other) -> None:
    if both_bool(input, other):
        refuse_without_kernel(op, input if isinstance(input, Tensor) else other)


def floor_divide(input, other):
    _refuse_bool_division("div_floor", input, other)
    _refuse_integer_division_by_zero("floor_divide", input, other)
    return _binary(P.floordiv, input, other)


def remainder(input, other):
    _refuse_bool_division("remainder", input, other)
    _refuse_integer_division_by_zero("remainder", input, other)
    return _binary(P.mod, input, other)


@composite
def fmod(input, other):
    _refuse_bool_division("fmod", input, other)
    _refuse_integer_division_by_zero("fmod", input, other)
    a, b = _promoted(input, other)
    if not _is_float(a, b):
        return a - div(a, b, rounding_mode="trunc") * b
    kind = (a if isinstance(a, Tensor) else b).dtype
    if kind in dt.HALF and (a if isinstance(a, Tensor) else b).device.type == "cpu":
        # ATen's kernel: the operands in float32 (a number rounded to the dtype first), the
        # result rounded once
        def wide(v):
            return P.cast(v, dtype=dt.float32) if isinstance(v, Tensor) else \
                dt.half_value(v, kind)
        return P.cast(fmod(wide(a), wide(b)), dtype=kind)
    return a - trunc(a / b) * b


def _is_float(a, b) -> bool:
    return (a if isinstance(a, Tensor) else b).dtype.is_floating_point


def pow(input, exponent):
    if getattr(input, "dtype", None) in _LIMITED_UNSIGNED:
        raise _unsigned_refusal("pow", input.dtype)
    if both_bool(input, exponent):
        refuse_without_kernel("pow", input if isinstance(input, Tensor) else exponent)
    if isinstance(input, Tensor) and _number(exponent) is not None:
        e = _number(exponent)
        if input.dtype is dt.bool_ and type(e) is int:
            input = P.cast(input, dtype=dt.int64)     # bool ** 2 is int64, as in PyTorch
        if e == 2 and (input.dtype.is_floating_point or not isinstance(e, float)):
            return input * input      # the common square, exactly as PyTorch rounds it
        if isinstance(e, float) and not input.dtype.is_floating_point:
            input = _floating(input)
        elif type(e) is int and e < 0 and input.dtype.category <= dt.INT:
            raise op_error("pow", f"Integers to negative integer powers are not allowed "
                           f"({input.dtype.name} tensor ** {e}); raise a float tensor instead")
    elif isinstance(exponent, Tensor) and isinstance(input, Tensor) and \
            input.dtype.category <= dt.INT and exponent.dtype.category <= dt.INT:
        return _integer_pow(*_promoted(input, exponent))
    return _binary(P.pow, input, exponent)


def _integer_pow(base: Tensor, exponent: Tensor) -> Tensor:
    """base ** exponent of integer tensors, PyTorch's way where an exponent is negative (NumPy
    refuses): 1 and -1 have integer reciprocals (-1 ** -3 is -1), every other base gives 0."""
    negative = P.lt(exponent, 0)
    powers = P.pow(base, P.where(negative, 0, exponent))
    unit = P.where(P.eq(P.abs(base), 1), P.pow(base, P.mod(exponent, 2)), 0)
    return P.where(negative, unit, powers)


def float_power(input, exponent):
    """pow in double precision: complex128 when either operand is complex, else float64."""
    input = _as_tensor(input)
    complex_ = input.dtype.is_complex or isinstance(exponent, complex) or \
        (isinstance(exponent, Tensor) and exponent.dtype.is_complex)
    kind = dt.complex128 if complex_ else dt.float64
    if isinstance(exponent, Tensor):
        exponent = exponent.to(kind)
    return pow(input.to(kind), exponent)


def neg(input):
    if input.dtype is dt.bool_:
        raise op_error("neg", "Negation, the `-` operator, on a bool tensor is not supported. "
                       "If you are trying to invert a mask, use the `~` or `logical_not()` "
                       "operator instead.")
    return P.neg(input)


negative = neg


def abs(input):
    if input.dtype is dt.bool_:
        refuse_without_kernel("abs", input)
    return P.abs(input)


absolute = abs


def sign(input):
    if input.dtype is dt.bool_:
        return input.clone()              # PyTorch's sign of a bool is the bool itself
    return P.sign(input)


def reciprocal(input):
    return P.div(1.0, _floating(input))


def square(input):
    return input * input if input.dtype is not dt.bool_ else pow(input, 2)


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
    return P.tan(_floating(input))


def exp2(input):
    return P.pow(2.0, _floating(input))


def log2(input):
    return P.log(_floating(input)) * (1 / math.log(2))


def log10(input):
    return P.log(_floating(input)) * (1 / math.log(10))


def floor(input):
    if input.dtype is dt.bool_:
        refuse_without_kernel("floor", input)
    return P.floor(input)


def ceil(input):
    if input.dtype is dt.bool_:
        refuse_without_kernel("ceil", input)
    return P.ceil(input)


def trunc(input):
    if input.dtype is dt.bool_:
        refuse_without_kernel("trunc", input)
    return P.trunc(input)


fix = trunc


def round(input, *, decimals=0):
    if input.dtype is dt.bool_ or decimals and input.dtype.category == dt.INT:
        refuse_without_kernel("round", input, (dt.BOOL, dt.INT))
    if input.dtype.is_floating_point and decimals:
        return P.round(input, decimals=decimals)
    return P.round(input)


def frac(input):
    refuse_without_kernel("frac", input, (dt.BOOL, dt.INT))
    return input - trunc(input)


def maximum(input, other):
    return _binary(P.maximum, input, other)


def minimum(input, other):
    return _binary(P.minimum, input, other)


def clamp(input, min=None, max=None):
    if input.dtype is dt.bool_ and all(both_bool(input, b) for b in (min, max) if b is not None):
        refuse_without_kernel("clamp", input)       # a number bound promotes to its dtype
    if min is None and max is None:
        raise op_error("clamp", "At least one of 'min' or 'max' must not be None")
    out = input
    # where() rather than maximum/minimum: PyTorch passes the gradient where min <= x <= max
    if min is not None:
        lo, x = _promoted(min, out, fill_op="clamp")
        out = P.where(lt(x, lo), lo, x) if isinstance(lo, Tensor) else P.where(P.lt(x, lo), lo, x)
    if max is not None:
        hi, x = _promoted(max, out, fill_op="clamp")
        out = P.where(gt(x, hi), hi, x) if isinstance(hi, Tensor) else P.where(P.gt(x, hi), hi, x)
    return out


clip = clamp


def clamp_min(input, min):
    if both_bool(input, min):                # PyTorch's clamp_min has a bool loop: or
        return logical_or(input, min)
    return clamp(input, min=min)


def clamp_max(input, max):
    if both_bool(input, max):                # and clamp_max's: and
        return logical_and(input, max)
    return clamp(input, max=max)


@composite
def lerp(input, end, weight):
    """PyTorch's two formulas: `input + w * (end - input)` for |w| < 0.5, else
    `end - (end - input) * (1 - w)`, exact at w = 1 (and infinities come out as there).
    float16/bfloat16 compute in float32 and round once, as PyTorch's kernel does."""
    refuse_without_kernel("lerp", input, (dt.BOOL, dt.INT))
    lifted = _lerp_lifted_weight(input, weight) if type(weight) is SymbolicNumber else None
    if lifted is None:
        weight = _lerp_checked(input, end, weight)
    else:
        _lerp_checked(input, end, 0.0)              # end's dtype
        weight = lifted
    narrow = input.dtype if input.dtype in (dt.float16, dt.bfloat16) else None
    if narrow is not None:
        input, end = P.cast(input, dtype=dt.float32), _lerp_widened(end)
        weight = _lerp_widened(weight)
    if isinstance(weight, Tensor):
        small = lt(abs(weight), 0.5)
        out = P.where(small, *_same_shape_pair(input, end)) + \
            P.where(small, weight, weight - 1) * (end - input)
    else:
        w = _in_opmath(weight, input.dtype)
        out = input + w * (end - input) if _py_abs(w) < 0.5 else end - (end - input) * (1 - w)
    return out if narrow is None else P.cast(out, dtype=narrow)


def _lerp_lifted_weight(input, weight: SymbolicNumber):
    """A lifted number weight (a target network's `lerp_(online, 1 - m)` under a momentum that
    changes each step) as the 0-d graph input of the dtype PyTorch's kernel holds it in (float32
    but for float64 inputs, as `_in_opmath`; float16 and bfloat16 compute in float32): lerp's
    tensor-weight formula then picks PyTorch's formula by |w| < 0.5 in the graph, the same bits
    as the number's. Where no trace can lift it (complex), None: the number is then read into
    Python (`_number` specialises it)."""
    tracer = STATE.tracer
    if tracer is None or input.dtype.is_complex or isinstance(weight.value, complex) or \
            input.device.type == "meta":
        return None
    return tracer.number_input(weight, dt.float64 if input.dtype is dt.float64 else dt.float32,
                               input.device)


def _lerp_checked(input, end, weight):
    """PyTorch's dtype rule of lerp: `end` and a weight tensor with dims take input's dtype;
    a 0-dim weight tensor of any dtype is converted to it, a complex number needs a complex
    input. Returns the weight to use."""
    if isinstance(end, Tensor) and end.dtype is not input.dtype:
        raise op_error("lerp", f"expected dtype {input.dtype.name} for `end` but got dtype "
                       f"{end.dtype.name}")
    if isinstance(weight, Tensor):
        if weight.ndim == 0 and weight.dtype is not input.dtype:
            return P.cast(weight, dtype=input.dtype)
        if weight.dtype is not input.dtype:
            raise op_error("lerp", f"expected dtype {input.dtype.name} for `weight` but got "
                           f"dtype {weight.dtype.name}")
        return weight
    weight = _number(weight)
    if isinstance(weight, complex) and not input.dtype.is_complex:
        raise op_error("lerp", f"a complex weight ({weight}) needs a complex input, got "
                       f"{input.dtype.name}")
    return weight


def _lerp_widened(x):
    return P.cast(x, dtype=dt.float32) if isinstance(x, Tensor) else x


def _same_shape_pair(input: Tensor, end):
    """(input, end) as tensors of one dtype for where(); `end` may be a Python number."""
    return input, end if isinstance(end, Tensor) else _as_tensor(end, input).to(input.dtype)


def _in_opmath(weight, dtype: dt.DType):
    """A Python weight as PyTorch's kernel holds it: in float32 (complex64) unless the input
    is float64 (complex128), so the choice of formula and `1 - w` match its bits."""
    if dtype in (dt.float64, dt.complex128):
        return weight
    if isinstance(weight, complex):
        return complex(np.complex64(weight))
    return float(np.float32(weight))


@composite
def addcmul(input, tensor1, tensor2, *scalar_first, value=1):
    if input.dtype is dt.bool_:
        refuse_without_kernel("addcmul", input)
    if scalar_first:                # addcmul(x, 2, t1, t2): PyTorch's deprecated overload
        (tensor1, tensor2), value = scalar_first_overload("addcmul", tensor1,
                                                          (tensor2,) + scalar_first, value)
    return input + value * tensor1 * tensor2 if value != 1 else input + tensor1 * tensor2


@composite
def addcdiv(input, tensor1, tensor2, *scalar_first, value=1):
    if scalar_first:                # addcdiv(x, 2, t1, t2): PyTorch's deprecated overload
        (tensor1, tensor2), value = scalar_first_overload("addcdiv", tensor1,
                                                          (tensor2,) + scalar_first, value)
    return input + value * (tensor1 / tensor2) if value != 1 else input + tensor1 / tensor2


@composite
def hypot(input, other):
    refuse_without_kernel("hypot", input, (dt.BOOL, dt.INT))
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
    _check_unsigned("logical_not", input)
    return P.bitwise_not(_bool(input))


def logical_and(input, other):
    _check_unsigned("logical_and", input, other)
    return P.bitwise_and(_bool(input), _bool(other))


def logical_or(input, other):
    _check_unsigned("logical_or", input, other)
    return P.bitwise_or(_bool(input), _bool(other))


def logical_xor(input, other):
    _check_unsigned("logical_xor", input, other)
    return P.bitwise_xor(_bool(input), _bool(other))


def _bitwise(prim, name):
    def op(input, other):
        a, b = _promoted(input, other)
        dtype = (a if isinstance(a, Tensor) else b).dtype
        if dtype.is_floating_point:
            raise op_error(name, f"\"{name}_cpu\" not implemented for "
                           f"'{dt.SCALAR_TYPE_NAMES[dtype]}' ({dtype.name})", NotImplementedError)
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
    if a.dtype is dt.bool_:              # PyTorch measures bools' distance as floats
        a, b = _floating(a), _floating(b)
    # PyTorch's order: |rtol * b| (a float, never int8's wrapped |-128|), |a - b| in a's dtype;
    # an infinite distance is never close (1 and inf are not), equal infinities are
    error = abs(a - b)
    close = logical_and(isfinite(error), le(error, atol + abs(rtol * b)))
    close = logical_or(close, eq(a, b))
    if equal_nan:
        close = logical_or(close, logical_and(isnan(a), isnan(b)))
    return close


def equal(input, other) -> bool:
    return tuple(input.shape) == tuple(other.shape) and bool(eq(input, other).all())
