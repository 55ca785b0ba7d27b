"""What every family of `kiln.tracer.functional` shares: operand conversion, type promotion,
broadcasting, dim normalisation, and creation shorthands. Imports no other family."""

from __future__ import annotations

import builtins

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P, ShapeError, broadcast_shapes, normalize_axis
from kiln.tracer import creation
from kiln.tracer.errors import named_dim_error, op_error
from kiln.tracer.symbolic_number import SymbolicNumber, lifts
from kiln.tracer.tensor import STATE, Tensor


_NUMBER = (int, float, bool, complex)
_py_max, _py_min, _py_sum, _py_abs, _py_round = (builtins.max, builtins.min, builtins.sum,
                                                builtins.abs, builtins.round)


def _number(x):
    """Python number of a literal operand; NumPy scalars count as Python numbers."""
    if isinstance(x, _NUMBER):
        return x if type(x) is not SymbolicNumber else x.specialise()
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


def _cast_operand(x, dtype, fill_op: str | None = None):
    if isinstance(x, Tensor):
        return x if x.dtype is dtype else P.cast(x, dtype=dtype)
    if dtype is dt.bool_:
        return bool(x)
    if dtype.is_complex:
        return complex(x)
    if dtype.is_floating_point:
        return float(x)
    if fill_op is not None:                         # a value written into the tensor
        return creation.int_fill_value(fill_op, int(x), dtype)
    return dt.wrapped_int(int(x), dtype)            # an operand: wraps around, as PyTorch


def _promoted(a, b, float_only: bool = False, fill_op: str | None = None):
    """Both operands converted to their common dtype, literals left as Python numbers (an
    integer literal wraps around into an integer dtype, as PyTorch's operands do; where
    `fill_op` names the op, it is a value to write, refused when out of range as there)."""
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
    if float_only and not dtype.is_floating_point and not dtype.is_complex:
        dtype = dt.get_default_dtype()
    return _cast_operand(a, dtype, fill_op), _cast_operand(b, dtype, fill_op)


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
    if type(a) is SymbolicNumber or type(b) is SymbolicNumber:
        return _symbolic_operand(prim, a, b, float_only)
    tracer = STATE.tracer
    if tracer is not None and tracer.number_values and isinstance(a, Tensor) and \
            isinstance(b, Tensor):
        number, tensor = (a, b) if tracer.stands_for_number(a) else (b, a)
        if _half_cpu(tensor) and number.dtype.is_floating_point and \
                tracer.stands_for_number(number) and not tracer.stands_for_number(tensor):
            return _with_half(prim, a, b, number, tensor)
    a, b = _promoted(a, b, float_only)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError(f"{prim.__name__}: expected at least one tensor, got "
                        f"{type(a).__name__} and {type(b).__name__}")
    return prim(a, b)


def _symbolic_operand(prim, a, b, float_only: bool):
    """`_binary` with a lifted number argument for an operand (`symbolic_number`): promoted as
    the plain number would be, then a 0-d graph input of the promoted dtype holding the number
    as the kernel takes it, so a replay computes with the next call's value as eager would.
    Anything else (two numbers, a dtype eager treats specially) reads the value: specialised."""
    number, other = (a, b) if type(a) is SymbolicNumber else (b, a)
    pa, pb = _promoted(a.value if a is number else a, b.value if b is number else b,
                       float_only)
    tensor = pb if number is a else pa
    tracer = STATE.tracer
    half = isinstance(tensor, Tensor) and _half_cpu(tensor)
    if tracer is None or type(other) is SymbolicNumber or not isinstance(tensor, Tensor) or \
            not (half or lifts(tensor.dtype)) or tensor.device.type == "meta":
        number.specialise(f"an operand of {prim.__name__}")
        if not isinstance(pa, Tensor) and not isinstance(pb, Tensor):
            return _binary(prim, pa, pb, float_only)
        return prim(pa, pb)
    if half:
        wide = prim.__name__ in _READ_AS_FLOAT32
        lifted = tracer.number_input(number, dt.float32 if wide else tensor.dtype, tensor.device)
        return _with_half(prim, *((lifted, pb) if number is a else (pa, lifted)), lifted, tensor)
    lifted = tracer.number_input(number, tensor.dtype, tensor.device)
    return prim(lifted, pb) if number is a else prim(pa, lifted)


# the ops whose CPU kernels read a number operand of float16/bfloat16 tensors as a float32
# (kiln.tracer.dispatch._widen_half; the others round it to the tensors' dtype first)
_READ_AS_FLOAT32 = ("mul", "div")


def _half_cpu(x: Tensor) -> bool:
    """Whether `x` is a float16 or bfloat16 tensor whose eager ops widen to float32 with a
    number operand converted per op (`dispatch._widen_half`: on the CPU; bfloat16 is CPU only)."""
    return x.dtype in dt.HALF and x.device.type == "cpu"


def _with_half(prim, a, b, number: Tensor, tensor: Tensor) -> Tensor:
    """prim(a, b), where `number` (a or b) is a 0-d tensor holding at run time the Python number
    eager computes with, and `tensor` (the other) is a float16/bfloat16 CPU tensor: computed as
    eager computes `prim` of `tensor` and the number (`dispatch._widen_half`), in float32 with
    one rounding to the half dtype, the number read as a float32 by mul and div and rounded to
    the half dtype (through float32, `dtypes.half_value`) by the other ops. (A 0-d tensor
    operand would be rounded to the half dtype first in every op: momentum 0.9 as 0.8999.)"""
    half = tensor.dtype
    wide = number if number.dtype is dt.float32 else P.cast(number, dtype=dt.float32)
    if prim.__name__ in _READ_AS_FLOAT32:
        t32 = P.cast(tensor, dtype=dt.float32)
        return P.cast(prim(wide, t32) if number is a else prim(t32, wide), dtype=half)
    rounded = number if number.dtype is half else P.cast(wide, dtype=half)
    return prim(rounded, tensor) if number is a else prim(tensor, rounded)


def refuse_without_kernel(op: str, x, categories: tuple = (dt.BOOL,)) -> None:
    """PyTorch's NotImplementedError where its CPU kernel of `op` has no loop for the dtype of
    tensor `x` (floor of a bool tensor, hypot of an int tensor): kiln refuses it too rather
    than answer what PyTorch never computes."""
    if isinstance(x, Tensor) and x.dtype.category in categories:
        raise op_error(op, f"\"{op}\" not implemented for '{dt.SCALAR_TYPE_NAMES[x.dtype]}' "
                       f"({x.dtype.name} input, as in PyTorch); convert it first, e.g. with "
                       f"{'.long()' if x.dtype is dt.bool_ else '.float()'}", NotImplementedError)


def refuse_integers(op: str, x) -> None:
    """refuse_without_kernel for integer and bool inputs: PyTorch's activation kernels (elu,
    gelu, silu, ...) have neither, unlike its math functions (tanh, exp), which compute ints
    in the default float dtype."""
    refuse_without_kernel(op, x, (dt.BOOL, dt.INT))


def both_bool(a, b) -> bool:
    """Whether two operands promote to bool: bool tensors or Python bools."""
    return (type(a) is bool or isinstance(a, Tensor) and a.dtype is dt.bool_) and \
        (type(b) is bool or isinstance(b, Tensor) and b.dtype is dt.bool_)


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
    if x.dtype.is_floating_point or x.dtype.is_complex:     # complex math stays complex
        return x
    return P.cast(x, dtype=dt.get_default_dtype())



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


def _norm_dim(dim, ndim: int, op: str = "dim") -> int:
    if type(dim) is int and -ndim <= dim < ndim:     # the common case, no checks needed
        return dim + ndim if dim < 0 else dim
    if isinstance(dim, str) or isinstance(dim, (list, tuple)) and any(
            isinstance(d, str) for d in dim):
        raise named_dim_error(dim)
    try:
        return normalize_axis(int(dim), ndim)
    except ShapeError as e:
        raise op_error(op, str(e), IndexError) from None


# ----------------------------------------------------------------------------- creation helpers

# (the public creation functions live in kiln.tracer.creation; these serve the families)

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
