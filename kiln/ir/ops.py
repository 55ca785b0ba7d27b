"""The primitive ops: for each, its shape and dtype rule, array implementation and gradient rule.

Every tensor operation in kiln is one of these primitives or a Python composition of them.
An entry reads like the math: `impl(xp, *arrays, **attrs)` computes it with an array module
(`numpy` or `cupy`), `infer(shapes, dtypes, **attrs)` gives the result's shape and dtype (and
rejects bad input), and `grad(g, out, *inputs, **attrs)` maps the output gradient to one
gradient per input, written with tensor ops so that eager autograd, higher-order gradients and
backward tracing all run the same rule.

Every other fact about an op is given in the same `define` call, as a field of its
`Primitive` (kiln.ir.primitive): which inputs the gradient rule reads, whether it reads the
output, the cost class, a decomposition for the compiler, the NumPy ufunc, and for an
elementwise op its scalar math, from which every kernel renderer writes it.

Inputs of a primitive are tensors or Python numbers ("literals"); in shape rules a literal has
shape () and dtype None. Attributes are hashable (tuples, numbers, dtypes).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.primitive import (  # noqa: F401  (re-exported: the registry's names)
    CHEAP, COPIED, CREATION, ELEMENTWISE, EXPENSIVE, INDEX, MATMUL, MOVEMENT, NORMALIZE,
    PRIMITIVES, RANDOM, REDUCE, SAVED, P, Primitive, ScalarMath, ShapeError, define)


# ----------------------------------------------------------------------------- shape rules

def broadcast_shapes(*shapes: tuple) -> tuple:
    """NumPy/PyTorch broadcasting of shapes, with PyTorch's message on mismatch."""
    if len(shapes) == 2 and shapes[0] == shapes[1]:
        return shapes[0]
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(-ndim, 0):
        size = 1
        for k, s in enumerate(shapes):
            if len(s) >= -i:
                d = s[i]
                if d != 1:
                    if size != 1 and d != size:
                        raise ShapeError(
                            f"The size of tensor a ({size}) must match the size of tensor b "
                            f"({d}) at non-singleton dimension {ndim + i}; shapes were "
                            + ", ".join(str(list(s)) for s in shapes))
                    size = d
        out.append(size)
    return tuple(out)


def _tensor_dtype(dtypes):
    for d in dtypes:
        if d is not None:
            return d
    raise ShapeError("an elementwise op needs at least one tensor input")


def _same_dtype(dtypes):
    first = _tensor_dtype(dtypes)
    for d in dtypes:
        if d is not None and d is not first:
            raise ShapeError(f"expected all tensor inputs to have one dtype, got {list(dtypes)}")
    return first


def _elementwise(shapes, dtypes):
    return broadcast_shapes(*shapes), _same_dtype(dtypes)


def _compare(shapes, dtypes):
    _same_dtype(dtypes)
    return broadcast_shapes(*shapes), dt.bool_


def _order(shapes, dtypes):
    """An ordering comparison: complex numbers have no order, so PyTorch refuses them."""
    if any(d is not None and d.is_complex for d in dtypes):
        raise ShapeError(f"comparison is not implemented for complex tensors "
                         f"({[d.name for d in dtypes if d is not None]}): compare their "
                         f".real, .imag or .abs() instead", RuntimeError)
    return _compare(shapes, dtypes)


def _no_complex(dtype, what: str) -> None:
    if dtype.is_complex:
        raise ShapeError(f"{what} is not supported for complex tensors ({dtype.name}): complex "
                         "numbers have no order; reduce their .abs() or .real instead",
                         RuntimeError)


def _unary(shapes, dtypes):
    return shapes[0], dtypes[0]


def _float_unary(shapes, dtypes):
    if not dtypes[0].is_floating_point and not dtypes[0].is_complex:
        raise ShapeError(f"expected a floating-point input, got {dtypes[0].name}", TypeError)
    return shapes[0], dtypes[0]


def normalize_axis(axis: int, ndim: int) -> int:
    """A dimension index in [-ndim, ndim) made non-negative; PyTorch's IndexError otherwise."""
    lo, hi = -max(ndim, 1), max(ndim, 1) - 1
    if not lo <= axis <= hi:
        raise ShapeError(f"Dimension out of range (expected to be in range of [{lo}, {hi}], "
                         f"but got {axis})", IndexError)
    return axis % max(ndim, 1)


def reduced_shape(shape: tuple, axes: tuple, keepdim: bool) -> tuple:
    if keepdim:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce(shapes, dtypes, axes, keepdim):
    for a in axes:
        if not 0 <= a < max(len(shapes[0]), 1):
            raise ShapeError(f"reduction axis {a} is out of range for shape {list(shapes[0])}",
                             IndexError)
    return reduced_shape(shapes[0], axes, keepdim), dtypes[0]


def _nonempty_reduce(shapes, dtypes, axes, keepdim):
    _no_complex(dtypes[0], "max/min/argmax")
    for a in axes:
        if len(shapes[0]) and shapes[0][a] == 0:
            raise ShapeError(f"cannot reduce over dimension {a} of size 0 (shape "
                             f"{list(shapes[0])}): the operation has no identity", IndexError)
    return _reduce(shapes, dtypes, axes, keepdim)


def _keep(shape, axes):
    """The shape a reduction's output has with keepdim=True, for broadcasting it back."""
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def unbroadcast(g, shape: tuple):
    """Sum a broadcast gradient back to an input's shape."""
    return g if g.shape == shape else g.sum_to_size(shape)


# ----------------------------------------------------------------------------- elementwise

def _quiet_unary(name, fn, grad, infer=_float_unary, doc="", **facts):
    define(name, ELEMENTWISE, infer, fn, grad, arity=1, quiet=True, doc=doc, **facts)


define("neg", ELEMENTWISE, _unary, lambda xp, x: -x if x.dtype != bool else ~x,
       lambda g, out, x: (-g,), arity=1, reads=(), ufunc="negative")
def _abs_infer(shapes, dtypes):
    return shapes[0], dtypes[0].to_real()       # a complex tensor's magnitudes are real


define("abs", ELEMENTWISE, _abs_infer, None, lambda g, out, x: (g * P.sign(x),), arity=1,
       ufunc="absolute")
define("sign", ELEMENTWISE, _unary, None, lambda g, out, x: (g * 0,), arity=1, reads=(),
       ufunc="sign", scalar=ScalarMath("where(x != x, x, s)", (
           ("s", "where(x > 0.0, 1.0, where(x < 0.0, -1.0, 0.0))"),), comment="sign(x), NaN kept"))


def _relu_infer(shapes, dtypes):
    if dtypes[0] is dt.bool_:
        raise ShapeError("Boolean inputs not supported for relu")
    _no_complex(dtypes[0], "relu (clamp)")
    return shapes[0], dtypes[0]


def _real_unary(shapes, dtypes):
    """A rounding op: complex numbers have no floor or ceiling (PyTorch refuses them)."""
    _no_complex(dtypes[0], "rounding (floor, ceil, trunc, round)")
    return shapes[0], dtypes[0]


def _real_elementwise(shapes, dtypes):
    for d in dtypes:
        if d is not None:
            _no_complex(d, "maximum/minimum (clamp)")
    return _elementwise(shapes, dtypes)


# A primitive, not where(x <= 0, 0, x): the most common activation is one dispatch in eager
# mode (benchmarks/eager_overhead.py) and one scalar op in a kernel. NaN propagates (maximum
# keeps it); the gradient passes where the output is not <= 0, NaN included, as PyTorch's.
define("relu", ELEMENTWISE, _relu_infer, lambda xp, x: xp.maximum(x, 0),
       lambda g, out, x: (P.where(P.le(out, 0), 0, g),), arity=1, reads=(), output=SAVED)
_quiet_unary("exp", None, lambda g, out, x: (g * out,), reads=(), output=SAVED,
             cost=EXPENSIVE, ufunc="exp")
_quiet_unary("log", None, lambda g, out, x: (g / x,), cost=EXPENSIVE, ufunc="log")
_quiet_unary("log1p", None, lambda g, out, x: (g / (x + 1),), cost=EXPENSIVE, ufunc="log1p",
             scalar=ScalarMath("where(u == inf, u, r)", (
                 ("u", "1.0 + x"),
                 ("d", "u - 1.0"),
                 ("r", "log(u) * (x / d)"),
                 ("r", "where(d == 0.0, x, r)")),
                 comment="log(1 + x) by Kahan's trick: log(u) * x / (u - 1) cancels the "
                         "rounding of u = 1 + x"))
_quiet_unary("expm1", None, lambda g, out, x: (g * (out + 1),), reads=(), output=SAVED,
             cost=EXPENSIVE, ufunc="expm1")
_quiet_unary("sqrt", None, lambda g, out, x: (g / (out * 2),), reads=(), output=SAVED,
             ufunc="sqrt")
_quiet_unary("sin", None, lambda g, out, x: (g * P.cos(x),), cost=EXPENSIVE, ufunc="sin")
_quiet_unary("cos", None, lambda g, out, x: (-(g * P.sin(x)),), cost=EXPENSIVE, ufunc="cos")
# A primitive, not sin / cos: its rule reads the output (1 + tan^2), so `x.tan_()` keeps no
# use of the overwritten x, as PyTorch's does
_quiet_unary("tan", None, lambda g, out, x: (g * (1 + out * out),), reads=(), output=SAVED,
             cost=EXPENSIVE, ufunc="tan")
_quiet_unary("tanh", None, lambda g, out, x: (g * (1 - out * out),), reads=(), output=SAVED,
             cost=EXPENSIVE, ufunc="tanh",
             scalar=ScalarMath("where(x < 0.0, -t, t)", (
                 ("e", "expm1(-2.0 * abs(x))"),
                 ("t", "-e / (2.0 + e)")),
                 comment="tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)), with the sign of x"))
_quiet_unary("sigmoid", lambda xp, x: 1 / (1 + xp.exp(-x)),
             lambda g, out, x: (g * out * (1 - out),), reads=(), output=SAVED, cost=EXPENSIVE,
             scalar=ScalarMath("1.0 / (1.0 + exp(-x))", comment="1 / (1 + exp(-x))"))
_quiet_unary("erf", lambda xp, x: _erf(xp, x),
             lambda g, out, x: (g * (2 / math.sqrt(math.pi)) * P.exp(-(x * x)),),
             cost=EXPENSIVE,
             scalar=ScalarMath("where(t > 0.927734375, big, small)", (
                 ("t", "abs(a)"),
                 ("s", "a * a"),
                 ("r", "-1.72853470e-5 * t + 3.83197126e-4"),
                 ("u", "-3.88396438e-3 * t + 2.42546219e-2"),
                 ("r", "r * s + u"),
                 ("r", "r * t - 1.06777877e-1"),
                 ("r", "r * t - 6.34846687e-1"),
                 ("r", "r * t - 1.28717512e-1"),
                 ("r", "r * t - t"),
                 ("big", "1.0 - exp(r)"),
                 ("big", "where(a < 0.0, -big, big)"),
                 ("p", "-5.96761703e-4 * s + 4.99119423e-3"),
                 ("p", "p * s - 2.67681349e-2"),
                 ("p", "p * s + 1.12819925e-1"),
                 ("p", "p * s - 3.76125336e-1"),
                 ("p", "p * s + 1.28379166e-1"),
                 ("small", "p * a + a")), params=("a",),
                 comment="erf(x): minimax approximations (N. Juffa), about 1 float32 ulp on "
                         "each branch"))
def _rounding(fn):
    # integers are their own floor: a copy, as PyTorch's, so that writing the result in place
    # leaves the input alone (returning x itself let `x.floor().add_(1)` change x)
    return lambda xp, x: x.copy() if x.dtype.kind in "biu" else getattr(xp, fn)(x)


for _name in ("floor", "ceil", "trunc"):
    define(_name, ELEMENTWISE, _real_unary, _rounding(_name), lambda g, out, x: (g * 0,), arity=1,
           reads=())
define("round", ELEMENTWISE, lambda shapes, dtypes, decimals=0: _real_unary(shapes, dtypes),
       lambda xp, x, decimals=0: xp.round(x, decimals),
       lambda g, out, x, decimals=0: (g * 0,), arity=1, reads=())
define("bitwise_not", ELEMENTWISE, _unary, lambda xp, x: ~x, None, arity=1)


def _erf(xp, x):
    if xp is np:
        # NumPy has no erf; math.erf is exact to the last bit, and erf is rare on the hot path.
        # (asarray: frompyfunc hands back a bare Python float for a 0-d input)
        return np.asarray(np.frompyfunc(math.erf, 1, 1)(x)).astype(x.dtype) if x.size else \
            x.copy()
    import cupyx.scipy.special  # GPU path only
    return cupyx.scipy.special.erf(x)


def _shape(v):
    return v.shape if not isinstance(v, (int, float, bool, complex)) else None


def _pow_grad(g, out, x, y):
    if _shape(x) is None:
        gx = None
    elif _shape(y) is None and y == 0:
        gx = g * 0
    else:
        gx = g * y * P.pow(x, y - 1)
    if _shape(y) is None or not (y.dtype.is_floating_point or y.dtype.is_complex):
        gy = None
    elif _shape(x) is None:
        gy = g * out * math.log(x)
    else:
        # d/dy x**y = x**y log x, taken as 0 where x == 0 so that 0**y has a finite gradient
        gy = g * P.where(P.eq(x, 0), 0.0, out * P.log(x))
    return _both(gx, gy, x, y)


def _binary(name, impl, grad, infer=_elementwise, quiet=False, **facts):
    define(name, ELEMENTWISE, infer, impl, grad, arity=2, quiet=quiet, **facts)


def _both(gx, gy, x, y):
    """Gradients of a binary op, reduced to each tensor input's shape (None for literals)."""
    sx, sy = _shape(x), _shape(y)
    return (unbroadcast(gx, sx) if sx is not None and gx is not None else None,
            unbroadcast(gy, sy) if sy is not None and gy is not None else None)


def _wanted(v) -> bool:
    """Whether a binary op's input gets a gradient: a tensor that requires one. Static
    metadata, so the rules below may skip the other side's work (a literal factor, a mask,
    a constant table), which would otherwise be computed in full and dropped."""
    return _shape(v) is not None and _needs_grad(v)


def _add_grad(g, out, x, y):
    return (unbroadcast(g, x.shape) if _wanted(x) else None,
            unbroadcast(g, y.shape) if _wanted(y) else None)


def _sub_grad(g, out, x, y):
    # y's gradient is negated after it is summed to y's shape: a broadcast y (batch-norm's
    # mean) then costs one small negation, not one the size of g
    return (unbroadcast(g, x.shape) if _wanted(x) else None,
            -unbroadcast(g, y.shape) if _wanted(y) else None)


def _mul_grad(g, out, x, y):
    return (unbroadcast(g * y, x.shape) if _wanted(x) else None,
            unbroadcast(g * x, y.shape) if _wanted(y) else None)


def _div_grad(g, out, x, y):
    # d(x/y)/dy = -out/y; y is constant along the dims its gradient sums over, so the division
    # and negation run on y's shape, after the sum
    return (unbroadcast(g / y, x.shape) if _wanted(x) else None,
            -(unbroadcast(g * out, y.shape) / y) if _wanted(y) else None)


def _mul_reads(inputs) -> tuple:
    # each factor is read only for the other's gradient: `h * 2` does not read h
    x, y = inputs
    return tuple(i for i, other in ((0, y), (1, x)) if _wanted(other))


_binary("add", lambda xp, x, y: x + y, _add_grad, reads=(), ufunc="add")
_binary("sub", lambda xp, x, y: x - y, _sub_grad, reads=(), ufunc="subtract")
_binary("mul", lambda xp, x, y: x * y, _mul_grad, reads=_mul_reads, ufunc="multiply")
# div's rule also reads its output, which a write in place first copies (output=COPIED)
_binary("div", lambda xp, x, y: x / y, _div_grad, quiet=True, reads=(1,), output=COPIED,
        ufunc="true_divide")
_binary("floordiv", None, None, quiet=True, cost=EXPENSIVE, ufunc="floor_divide")
_binary("mod", None, lambda g, out, x, y: _both(g, -(g * P.floordiv(x, y)), x, y), quiet=True,
        cost=EXPENSIVE, ufunc="remainder")
def _pow_output(inputs) -> str | None:
    # x ** y reads its output only for y's gradient: x ** 2 reads just x
    return SAVED if _shape(inputs[1]) is not None else None


_binary("pow", None, _pow_grad, quiet=True, output=_pow_output, cost=EXPENSIVE, ufunc="power")


def _max_grad(g, out, x, y):
    # PyTorch splits the gradient evenly where the two inputs tie
    share = P.where(P.eq(x, y), 0.5, P.cast(P.eq(out, x), dtype=out.dtype))
    return _both(g * share, g * (1 - share), x, y)


_binary("maximum", None, _max_grad, infer=_real_elementwise, output=COPIED, ufunc="maximum")
_binary("minimum", None, _max_grad, infer=_real_elementwise, output=COPIED, ufunc="minimum")
_binary("bitwise_and", lambda xp, x, y: x & y, None)
_binary("bitwise_or", lambda xp, x, y: x | y, None)
_binary("bitwise_xor", lambda xp, x, y: x ^ y, None)
for _name, _fn in (("eq", lambda xp, x, y: x == y), ("ne", lambda xp, x, y: x != y),
                   ("lt", lambda xp, x, y: x < y), ("le", lambda xp, x, y: x <= y),
                   ("gt", lambda xp, x, y: x > y), ("ge", lambda xp, x, y: x >= y)):
    _binary(_name, _fn, None, infer=_compare if _name in ("eq", "ne") else _order)


def _where_infer(shapes, dtypes):
    if dtypes[0] is not dt.bool_:
        raise ShapeError(f"where expected condition to be a boolean tensor, got {dtypes[0]}",
                         RuntimeError)
    return broadcast_shapes(*shapes), _same_dtype(dtypes[1:])


def _where_grad(g, out, cond, x, y):
    gx = P.where(cond, g, 0.0) if _shape(x) is not None else None
    gy = P.where(cond, 0.0, g) if _shape(y) is not None else None
    return (None, unbroadcast(gx, x.shape) if gx is not None else None,
            unbroadcast(gy, y.shape) if gy is not None else None)


define("where", ELEMENTWISE, _where_infer, lambda xp, c, x, y: xp.where(c, x, y), _where_grad,
       arity=3, reads=(0,))


def _cast_grad(g, out, x, dtype):
    # real -> complex: the cast of a complex gradient to the real input's dtype keeps its real
    # part (dtypes.cast_array), the gradient of a real input of a complex-valued map
    return (P.cast(g, dtype=x.dtype) if x.dtype.is_floating_point or x.dtype.is_complex
            else None,)


# quiet: a float beyond float16's range becomes inf and NaN becomes some integer, as in
# PyTorch, which does not warn either
define("cast", ELEMENTWISE, lambda shapes, dtypes, dtype: (shapes[0], dtype),
       lambda xp, x, dtype: dt.cast_array(x, dtype), _cast_grad, arity=1, quiet=True, reads=())


# ----------------------------------------------------------------------------- reductions

def _sum_grad(g, out, x, axes, keepdim):
    return (P.expand(P.reshape(g, shape=_keep(x.shape, axes)), shape=x.shape),)


def _max_reduce_grad(g, out, x, axes, keepdim):
    keep = _keep(x.shape, axes)
    hit = P.cast(P.eq(x, P.reshape(out, shape=keep)), dtype=x.dtype)
    count = P.sum(hit, axes=axes, keepdim=True)   # ties share the gradient, as amax does
    return (P.reshape(g, shape=keep) * hit / count,)


def _prod_grad(g, out, x, axes, keepdim):
    # x_i's gradient is the product of the others; with a zero among them, out / x_i fails
    keep = _keep(x.shape, axes)
    is_zero = P.eq(x, 0)
    zeros = P.sum(P.cast(is_zero, dtype=x.dtype), axes=axes, keepdim=True)
    nonzero_prod = P.prod(P.where(is_zero, 1.0, x), axes=axes, keepdim=True)
    others = P.where(is_zero, P.where(P.eq(zeros, 1), nonzero_prod, 0.0),
                     P.where(P.eq(zeros, 0), nonzero_prod / P.where(is_zero, 1.0, x), 0.0))
    return (P.reshape(g, shape=keep) * others,)


def _sum_impl(xp, x, axes, keepdim):
    # Reductions call the array's own method (NumPy and CuPy arrays both have them): `np.sum(x)`
    # goes through a Python wrapper that costs more than summing a small array.
    if x.dtype == np.float16:
        # accumulated in float32, as PyTorch and kiln's generated kernels do; a long half sum
        # otherwise stops growing once each addend is below half an ulp of the running total
        return x.sum(axis=axes, keepdims=keepdim, dtype=np.float32).astype(np.float16)
    return x.sum(axis=axes, keepdims=keepdim, dtype=x.dtype)


define("sum", REDUCE, _reduce, _sum_impl, _sum_grad, arity=1, reads=())
define("max", REDUCE, _nonempty_reduce, lambda xp, x, axes, keepdim:
       x.max(axis=axes, keepdims=keepdim), _max_reduce_grad, arity=1, output=COPIED)
def _prod(xp, x, axes, keepdim):
    if xp is np:        # the ufunc's reduce, called from here (kiln's NumPy warnings are off)
        return np.multiply.reduce(x, axis=axes, keepdims=keepdim, dtype=x.dtype)
    return x.prod(axis=axes, keepdims=keepdim, dtype=x.dtype)


define("prod", REDUCE, _reduce, _prod, _prod_grad, arity=1)


def _argmax_infer(shapes, dtypes, axis, keepdim):
    _nonempty_reduce(shapes, dtypes, (axis,), keepdim)
    return reduced_shape(shapes[0], (axis,), keepdim), dt.int64


define("argmax", REDUCE, _argmax_infer,
       lambda xp, x, axis, keepdim: xp.argmax(x, axis=axis, keepdims=keepdim), None, arity=1)


def _cumsum_grad(g, out, x, axis):
    return (P.flip(P.cumsum(P.flip(g, axes=(axis,)), axis=axis), axes=(axis,)),)


def _cumsum(xp, x, axis):
    """A running sum; float32 on the CPU accumulates in float64, as PyTorch's CPU kernel (its
    result is the exact sum rounded once per element, not n roundings deep)."""
    if xp is np:        # the ufunc's accumulate, called from here (kiln's NumPy warnings are off)
        if x.dtype == np.float32:
            return np.add.accumulate(x, axis=axis, dtype=np.float64).astype(np.float32)
        return np.add.accumulate(x, axis=axis, dtype=x.dtype)
    return xp.cumsum(x, axis=axis, dtype=x.dtype)


define("cumsum", REDUCE, lambda shapes, dtypes, axis: (shapes[0], dtypes[0]), _cumsum,
       _cumsum_grad, arity=1,
       reads=(), extern=True)


# ----------------------------------------------------------------------------- movement

def _reshape_infer(shapes, dtypes, shape):
    if math.prod(shape) != math.prod(shapes[0]):
        raise ShapeError(f"shape '{list(shape)}' is invalid for input of size "
                         f"{math.prod(shapes[0])}")
    return shape, dtypes[0]


define("reshape", MOVEMENT, _reshape_infer, lambda xp, x, shape: x.reshape(shape),
       lambda g, out, x, shape: (P.reshape(g, shape=x.shape),), arity=1, reads=(), view=True)


def _permute_infer(shapes, dtypes, perm):
    if sorted(perm) != list(range(len(shapes[0]))):
        raise ShapeError(f"permute: dims {list(perm)} are not a permutation of the "
                         f"{len(shapes[0])} dims of shape {list(shapes[0])}")
    return tuple(shapes[0][p] for p in perm), dtypes[0]


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


define("permute", MOVEMENT, _permute_infer, lambda xp, x, perm: x.transpose(perm),
       lambda g, out, x, perm: (P.permute(g, perm=_inverse(perm)),), arity=1, reads=(),
       view=True)


def _expand_infer(shapes, dtypes, shape):
    src = shapes[0]
    if len(shape) < len(src):
        raise ShapeError(f"expand: the target shape {list(shape)} has fewer dims than the "
                         f"tensor's shape {list(src)}")
    for s, d in zip(src[::-1], shape[::-1]):
        if s != d and s != 1:
            raise ShapeError(f"The expanded size of the tensor ({d}) must match the existing "
                             f"size ({s}) at a non-singleton dimension; target {list(shape)}, "
                             f"tensor {list(src)}")
    return shape, dtypes[0]


def _expand_impl(xp, x, shape):
    """A view of `x` at `shape`: a broadcast (read-only: its elements repeat) where a dim
    grows, else a reshape (new leading dims of size 1), which in-place ops may write through,
    as PyTorch allows when no element repeats."""
    shape = tuple(shape)
    if math.prod(shape) == x.size:
        return x.reshape(shape)
    return xp.broadcast_to(x, shape)


define("expand", MOVEMENT, _expand_infer, _expand_impl,
       lambda g, out, x, shape: (unbroadcast(g, x.shape),), arity=1, reads=(), view=True)


def _slice_infer(shapes, dtypes, starts, stops, steps):
    out = []
    for d, a, b, s in zip(shapes[0], starts, stops, steps):
        if not (0 <= a <= b <= d and s >= 1):
            raise ShapeError(f"slice [{a}:{b}:{s}] does not fit a dim of size {d}", IndexError)
        out.append((b - a + s - 1) // s)
    return tuple(out), dtypes[0]


def _slice_grad(g, out, x, starts, stops, steps):
    if all(s == 1 for s in steps):
        pads = tuple((a, d - b) for a, b, d in zip(starts, stops, x.shape))
        return (P.pad(g, pads=pads, value=0.0),)
    # strided: scatter into zeros through a flat index
    return (P.index_add(P.full(shape=(x.numel(),), value=0.0, dtype=g.dtype, device=g.device),
                        _flat_positions(x.shape, starts, stops, steps, g),
                        P.reshape(g, shape=(g.numel(),)), axis=0).reshape(x.shape),)


def _flat_positions(shape, starts, stops, steps, like):
    idx = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    idx = idx[tuple(slice(a, b, s) for a, b, s in zip(starts, stops, steps))].reshape(-1)
    return like.new_tensor(idx)


define("slice", MOVEMENT, _slice_infer,
       lambda xp, x, starts, stops, steps: x[tuple(map(slice, starts, stops, steps))],
       _slice_grad, arity=1, reads=(), view=True)
define("flip", MOVEMENT, lambda shapes, dtypes, axes: (shapes[0], dtypes[0]),
       lambda xp, x, axes: xp.flip(x, axis=axes),
       lambda g, out, x, axes: (P.flip(g, axes=axes),), arity=1, reads=(), view=True)


# Tensor.unfold(dim, size, step): every `size`-long window along `axis`, `step` apart, as a new
# last dim. A strided view as in PyTorch (windows may overlap, so one element of the input can
# appear several times): the axis' stride becomes step times its own and the new dim gets the
# axis' stride. Compiled, it is decomposed into a gather (`take`) the kernels index.

def _unfold_dim_infer(shapes, dtypes, axis, size, step):
    x = shapes[0]
    if size < 0:
        raise ShapeError(f"size is {size} but must be >= 0")
    if step <= 0:
        raise ShapeError(f"step is {step} but must be > 0")
    if size > x[axis]:
        raise ShapeError(f"maximum size for tensor at dimension {axis} is {x[axis]} but size is "
                         f"{size}")
    count = (x[axis] - size) // step + 1
    return x[:axis] + (count,) + x[axis + 1:] + (size,), dtypes[0]


def _unfold_dim_impl(xp, x, axis, size, step):
    count = (x.shape[axis] - size) // step + 1
    shape = x.shape[:axis] + (count,) + x.shape[axis + 1:] + (size,)
    strides = (x.strides[:axis] + (x.strides[axis] * step,) + x.strides[axis + 1:]
               + (x.strides[axis],))
    # writeable as PyTorch's: a write into a window reaches the input (and, where windows
    # overlap, every window holding that element)
    return xp.lib.stride_tricks.as_strided(x, shape, strides, writeable=True) \
        if xp is np else xp.lib.stride_tricks.as_strided(x, shape, strides)


def window_positions(count: int, size: int, step: int) -> np.ndarray:
    """Along the unfolded axis, the input position of each (window, offset), windows first."""
    return (np.arange(count, dtype=np.int64)[:, None] * step
            + np.arange(size, dtype=np.int64)[None, :]).reshape(-1)


def _unfold_dim_grad(g, out, x, axis, size, step):
    # each window's gradient added back at the positions it read (overlaps accumulate)
    count = (x.shape[axis] - size) // step + 1
    nd = len(x.shape)
    perm = tuple(range(axis + 1)) + (nd,) + tuple(range(axis + 1, nd))
    moved = P.reshape(P.permute(g, perm=perm),
                      shape=tuple(x.shape[:axis]) + (count * size,) + tuple(x.shape[axis + 1:]))
    zeros = P.full(shape=tuple(x.shape), value=0.0, dtype=g.dtype, device=g.device)
    return (P.index_add(zeros, g.new_tensor(window_positions(count, size, step)), moved,
                        axis=axis),)


def _unfold_dim_decompose(b, x, axis, size, step):
    count = (x.shape[axis] - size) // step + 1
    nd = len(x.shape)
    idx = b.graph.add_constant(window_positions(count, size, step), dt.int64)
    taken = b.op("take", x, idx, axis=axis)
    split = b.op("reshape", taken, shape=x.shape[:axis] + (count, size) + x.shape[axis + 1:])
    perm = tuple(range(axis + 1)) + tuple(range(axis + 2, nd + 1)) + (axis + 1,)
    return b.op("permute", split, perm=perm)


define("unfold_dim", MOVEMENT, _unfold_dim_infer, _unfold_dim_impl, _unfold_dim_grad, arity=1,
       reads=(), view=True, decompose=_unfold_dim_decompose,
       doc="Tensor.unfold: windows of `size` along `axis`, `step` apart, as a last dim (a view)")


# Tensor.as_strided(size, stride, offset) on a contiguous tensor: element (i, j, ...) of the
# result is the input's flat element offset + i * stride[0] + j * stride[1] + ..., a view as in
# PyTorch (windows may overlap). The caller (tracer.functional_extra.shapes.as_strided) turns
# PyTorch's storage offset into `offset` and checks every position lies inside the input.

def strided_positions(size: tuple, stride: tuple, offset: int) -> np.ndarray:
    """The input's flat index of every element of an as_strided view, in row-major order."""
    pos = np.full((), offset, dtype=np.int64)
    for n, st in zip(size, stride):
        pos = pos[..., None] + np.arange(n, dtype=np.int64) * st
    return pos.reshape(-1)


def _as_strided_infer(shapes, dtypes, size, stride, offset):
    return tuple(size), dtypes[0]


def _as_strided_impl(xp, x, size, stride, offset):
    strides = tuple(st * x.itemsize for st in stride)
    start = x.reshape(-1)[offset:]          # x is contiguous: a view, and positions stay inside
    return xp.lib.stride_tricks.as_strided(start, size, strides, writeable=True) \
        if xp is np else xp.lib.stride_tricks.as_strided(start, size, strides)


def _as_strided_grad(g, out, x, size, stride, offset):
    # each element's gradient added back at the position it read (overlaps accumulate)
    n = int(np.prod(x.shape, dtype=np.int64))
    zeros = P.full(shape=(n,), value=0.0, dtype=g.dtype, device=g.device)
    count = int(np.prod(size, dtype=np.int64))
    flat = P.index_add(zeros, g.new_tensor(strided_positions(size, stride, offset)),
                       P.reshape(g, shape=(count,)), axis=0)
    return (P.reshape(flat, shape=tuple(x.shape)),)


def _as_strided_decompose(b, x, size, stride, offset):
    idx = b.graph.add_constant(strided_positions(size, stride, offset), dt.int64)
    flat = b.op("reshape", x, shape=(int(np.prod(x.shape, dtype=np.int64)),))
    return b.op("reshape", b.op("take", flat, idx, axis=0), shape=tuple(size))


define("as_strided", MOVEMENT, _as_strided_infer, _as_strided_impl, _as_strided_grad, arity=1,
       reads=(), view=True, decompose=_as_strided_decompose,
       doc="Tensor.as_strided on a contiguous tensor: flat positions offset + sum(i * stride)")


def _pad_infer(shapes, dtypes, pads, value):
    if len(pads) != len(shapes[0]):
        raise ShapeError(f"pad: {len(pads)} (low, high) pairs for {len(shapes[0])} dims")
    out = tuple(d + lo + hi for d, (lo, hi) in zip(shapes[0], pads))
    if any(d < 0 for d in out) or any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ShapeError(f"pad: negative padding {list(pads)} on shape {list(shapes[0])}")
    return out, dtypes[0]


def _pad_grad(g, out, x, pads, value):
    return (P.slice(g, starts=tuple(lo for lo, hi in pads),
                    stops=tuple(lo + d for (lo, hi), d in zip(pads, x.shape)),
                    steps=(1,) * len(pads)),)


def _pad_impl(xp, x, pads, value):
    # full + one slice assignment: xp.pad's generic machinery costs ~2x more on small arrays,
    # and every slice's gradient is a pad (the NumPy backend keeps x's memory order)
    out = xp.full(tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads)), value, dtype=x.dtype)
    out[tuple(slice(lo, lo + d) for d, (lo, hi) in zip(x.shape, pads))] = x
    return out


define("pad", MOVEMENT, _pad_infer, _pad_impl, _pad_grad, arity=1, reads=())


def _cat_infer(shapes, dtypes, axis):
    first = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first))
                                       if i != axis):
            raise ShapeError(f"Sizes of tensors must match except in dimension {axis}; got "
                             + ", ".join(str(list(s)) for s in shapes))
    out = list(first)
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out), _same_dtype(dtypes)


def _cat_grad(g, out, *xs, axis):
    grads, at = [], 0
    for x in xs:
        n = x.shape[axis]
        starts = tuple(at if i == axis else 0 for i in range(g.ndim))
        stops = tuple(at + n if i == axis else d for i, d in enumerate(g.shape))
        grads.append(P.slice(g, starts=starts, stops=stops, steps=(1,) * g.ndim))
        at += n
    return tuple(grads)


define("cat", MOVEMENT, _cat_infer, lambda xp, *xs, axis: xp.concatenate(xs, axis=axis),
       _cat_grad, reads=(), extern=True)


# ----------------------------------------------------------------------------- indexing

def _check_index(dtypes, name):
    if dtypes[1] not in (dt.int64, dt.int32):
        raise ShapeError(f"{name}: expected an int64 or int32 index, got {dtypes[1].name}",
                         IndexError)


# While a CUDA graph captures a program (kiln.runtime.cuda_graph) nothing may be read back to
# the host: the capturing thread's bounds checks then append (whether any index is bad: a 0-d
# device array, the check's function, its arguments) to its list instead, and the graph's
# runner reads the flags after each replay and runs the check again where one is set, raising
# the error eager mode raises.
_DEFERRED = threading.local()


def defer_index_checks(checks: list | None) -> list | None:
    """Send this thread's index bounds checks to `checks` (None: check at once, as usual);
    returns the list in place before."""
    previous = getattr(_DEFERRED, "checks", None)
    _DEFERRED.checks = checks
    return previous


def _take_infer(shapes, dtypes, axis):
    _check_index(dtypes, "take")
    x, idx = shapes
    return x[:axis] + idx + x[axis + 1:], dtypes[0]


# Eager on a GPU, reading a bounds check on the host would make the host wait for the whole
# queue of kernels. With a sink set (the tracer sets one that queues the check in
# kiln.runtime.pending_checks, with the user's line, or drops it where the caller checked the
# indices already), a check on device arrays hands the sink the index, its range and message
# instead, and a bad index is reported at the next read of device memory on the host.
_DEVICE_CHECK_SINK = [None]


def defer_device_index_checks(sink) -> object:
    """Send bounds checks on device arrays to `sink(idx, lowest, size, op, kind, message)`
    (None: check at once); returns the sink in place before."""
    previous = _DEVICE_CHECK_SINK[0]
    _DEVICE_CHECK_SINK[0] = sink
    return previous


def _take_impl(xp, x, idx, axis):
    n = x.shape[axis]
    deferred = getattr(_DEFERRED, "checks", None)
    if deferred is not None:        # capturing a CUDA graph: checked after it ran
        if idx.size:
            deferred.append((((idx < -n) | (idx >= n)).any(), _take_impl, (xp, x, idx, axis)))
        return xp.take(x, idx, axis=axis)
    sink = _DEVICE_CHECK_SINK[0]
    if sink is not None and xp is not np:      # eager on a GPU: checked at the next host read
        if idx.size:
            sink(idx, -n, n, "take", IndexError,
                 f"index {{}} is out of bounds for dimension {axis} with size {n}")
        return xp.take(x, idx, axis=axis)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx.max() if idx.max() >= n else idx.min()
        raise IndexError(f"index {int(bad)} is out of bounds for dimension {axis} with size {n}")
    return xp.take(x, idx, axis=axis)


def windows_geometry(size: tuple, kernel: tuple, stride: tuple, dilation: tuple) -> tuple:
    """How many (kernel, stride, dilation) windows fit along each dim of `size`."""
    return tuple((n - d * (k - 1) - 1) // s + 1
                 for n, k, s, d in zip(size, kernel, stride, dilation))


def _unfold_infer(shapes, dtypes, kernel, stride, dilation):
    (x,) = shapes
    if len(x) != 4:
        raise ShapeError(f"unfold: expected an (N, C, H, W) input, got shape {list(x)}")
    oh, ow = windows_geometry(x[2:], kernel, stride, dilation)
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"unfold: kernel {list(kernel)} with dilation {list(dilation)} does "
                         f"not fit in an input of spatial size {list(x[2:])}")
    return (x[0], oh, ow) + tuple(kernel) + (x[1],), dtypes[0]


def _unfold_impl(xp, x, kernel, stride, dilation):
    # out[n, y, x, i, j, c] = x[n, c, y*sh + i*dh, x*sw + j*dw]: the windows are a strided
    # view of x, copied (the NumPy backend runs a C kernel, or copies x channels-last first)
    n, c, h, w = x.shape
    (oh, ow), (kh, kw) = windows_geometry((h, w), kernel, stride, dilation), kernel
    sn, sc, sh, sw = x.strides
    view = xp.lib.stride_tricks.as_strided(
        x, (n, oh, ow, kh, kw, c),
        (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc))
    return xp.ascontiguousarray(view)


def _fold_infer(shapes, dtypes, size, kernel, stride, dilation):
    (cols,) = shapes
    want = windows_geometry(size, kernel, stride, dilation)
    if len(cols) != 6 or tuple(cols[1:3]) != want or tuple(cols[3:5]) != tuple(kernel):
        raise ShapeError(f"fold: expected windows of shape [N, {want[0]}, {want[1]}, "
                         f"{kernel[0]}, {kernel[1]}, C] for size {list(size)}, got {list(cols)}")
    return (cols[0], cols[5]) + tuple(size), dtypes[0]


def _fold_impl(xp, cols, size, kernel, stride, dilation, channels_last=False):
    # out[n, c, y*sh + i*dh, x*sw + j*dw] += cols[n, y, x, i, j, c], one window position (i, j)
    # at a time, the last first: each pixel then sums its windows in the order of their rows
    # in `cols`, as the NumPy backend's routes do (its C kernel streams through `cols`), so
    # every route gives the same bits. Each position adds in place (one add, with no copy
    # back as `out[...] += ...` makes). `channels_last`: into an (N, H, W, C) image instead
    n, oh, ow, kh, kw, c = cols.shape
    out = xp.zeros(((n,) + tuple(size) + (c,)) if channels_last else ((n, c) + tuple(size)),
                   dtype=cols.dtype)
    for i in reversed(range(kh)):
        for j in reversed(range(kw)):
            r, q = i * dilation[0], j * dilation[1]
            ys = slice(r, r + stride[0] * (oh - 1) + 1, stride[0])
            xs = slice(q, q + stride[1] * (ow - 1) + 1, stride[1])
            if channels_last:
                at, window = out[:, ys, xs, :], cols[:, :, :, i, j, :]
            else:
                at, window = out[:, :, ys, xs], cols[:, :, :, i, j, :].transpose(0, 3, 1, 2)
            xp.add(at, window, out=at)
    return out


# conv2d's im2col and its adjoint: unfold copies each (kh, kw) window of an (N, C, H, W)
# input into out[n, y, x, i, j, c] = x[n, c, y*sh + i*dh, x*sw + j*dw], ready for one matmul;
# fold sums such windows back into an image. Each is the other's gradient.
define("unfold", INDEX, _unfold_infer, _unfold_impl,
       lambda g, out, x, kernel, stride, dilation: (
           P.fold(g, size=tuple(x.shape[2:]), kernel=kernel, stride=stride, dilation=dilation),),
       arity=1, doc="the sliding (kh, kw) windows of an NCHW input, window then channels last")
define("fold", INDEX, _fold_infer, _fold_impl,
       lambda g, out, cols, size, kernel, stride, dilation: (
           P.unfold(g, kernel=kernel, stride=stride, dilation=dilation),),
       arity=1, reads=(), doc="the adjoint of unfold: windows summed back into an NCHW image")


# A convolution's three products, each with its unfold or fold inside: `unfold_matmul` (the
# forward, windows @ weight), `matmul_unfold` (the weight gradient, g^T @ windows) and
# `matmul_fold` (the input gradient, fold(g @ weight^T)). The windows matrix of a conv is
# kh*kw times its input and is only ever read by these products: as one primitive, the NumPy
# backend (on one thread) makes it a few images at a time into a buffer that stays in cache and
# reads it while it is there, and no windows are kept from the forward for the backward (see
# kiln.passes.conv_products, which forms them in compiled graphs). `windows` below is unfold(x)
# as a (N*oh*ow, kh*kw*C) matrix; each op's gradient is one of the other two.

def _window_rows(x, kernel, stride, dilation) -> tuple:
    """(rows, columns) of the windows matrix of an (N, C, H, W) input shape."""
    oh, ow = windows_geometry(x[2:], kernel, stride, dilation)
    return x[0] * oh * ow, kernel[0] * kernel[1] * x[1]


def _conv_operands(x, dtypes, kernel, stride, dilation) -> tuple:
    _unfold_infer((x,), dtypes[:1], kernel, stride, dilation)      # its shape errors
    return _window_rows(x, kernel, stride, dilation), _same_dtype(dtypes)


def _unfold_matmul_infer(shapes, dtypes, kernel, stride, dilation):
    x, w = shapes
    (rows, cols), dtype = _conv_operands(x, dtypes, kernel, stride, dilation)
    if len(w) != 2 or w[0] != cols:
        raise ShapeError(f"unfold_matmul: the windows ({rows}x{cols}) of input {list(x)} "
                         f"cannot be multiplied by a weight of shape {list(w)}")
    return (rows, w[1]), dtype


def _matmul_unfold_infer(shapes, dtypes, kernel, stride, dilation):
    a, x = shapes
    (rows, cols), dtype = _conv_operands(x, dtypes[::-1], kernel, stride, dilation)
    if len(a) != 2 or a[1] != rows:
        raise ShapeError(f"matmul_unfold: a matrix of shape {list(a)} cannot multiply the "
                         f"windows ({rows}x{cols}) of input {list(x)}")
    return (a[0], cols), dtype


def _matmul_fold_infer(shapes, dtypes, size, kernel, stride, dilation, channels_last=False):
    a, b = shapes
    oh, ow = windows_geometry(size, kernel, stride, dilation)
    k = kernel[0] * kernel[1]
    if len(a) != 2 or len(b) != 2 or a[1] != b[0] or oh <= 0 or ow <= 0 or \
            a[0] % (oh * ow) or b[1] % k:
        raise ShapeError(f"matmul_fold: a product of shapes {list(a)} and {list(b)} is not "
                         f"the (N*{oh}*{ow}, {kernel[0]}*{kernel[1]}*C) windows of size "
                         f"{list(size)}")
    n, c = a[0] // (oh * ow), b[1] // k
    return ((n,) + tuple(size) + (c,) if channels_last else (n, c) + tuple(size)), \
        _same_dtype(dtypes)


def _unfold_matmul_impl(xp, x, w, kernel, stride, dilation):
    cols = _unfold_impl(xp, x, kernel, stride, dilation)
    return xp.matmul(cols.reshape(-1, w.shape[0]), w)


def _matmul_unfold_impl(xp, a, x, kernel, stride, dilation):
    cols = _unfold_impl(xp, x, kernel, stride, dilation)
    return xp.matmul(a, cols.reshape(a.shape[1], -1))


def _matmul_fold_impl(xp, a, b, size, kernel, stride, dilation, channels_last=False):
    oh, ow = windows_geometry(size, kernel, stride, dilation)
    cols = xp.matmul(a, b).reshape((a.shape[0] // (oh * ow), oh, ow) + tuple(kernel) + (-1,))
    return _fold_impl(xp, cols, size, kernel, stride, dilation, channels_last)


def _t(m):
    return P.permute(m, perm=(1, 0))


def _unfold_matmul_grad(g, out, x, w, kernel, stride, dilation):
    # out = windows(x) @ w
    gx = P.matmul_fold(g, _t(w), size=tuple(x.shape[2:]), kernel=kernel, stride=stride,
                       dilation=dilation) if _needs_grad(x) else None
    gw = _t(P.matmul_unfold(_t(g), x, kernel=kernel, stride=stride, dilation=dilation)) \
        if _needs_grad(w) else None
    return gx, gw


def _matmul_unfold_grad(g, out, a, x, kernel, stride, dilation):
    # out = a @ windows(x)
    ga = _t(P.unfold_matmul(x, _t(g), kernel=kernel, stride=stride, dilation=dilation)) \
        if _needs_grad(a) else None
    gx = P.matmul_fold(_t(a), g, size=tuple(x.shape[2:]), kernel=kernel, stride=stride,
                       dilation=dilation) if _needs_grad(x) else None
    return ga, gx


def _matmul_fold_grad(g, out, a, b, size, kernel, stride, dilation, channels_last=False):
    # out = fold(a @ b): the adjoint of fold is unfold
    if channels_last:           # g is (N, H, W, C): the NCHW gradient it is a view of
        g = P.permute(g, perm=(0, 3, 1, 2))
    ga = P.unfold_matmul(g, _t(b), kernel=kernel, stride=stride, dilation=dilation) \
        if _needs_grad(a) else None
    gb = P.matmul_unfold(_t(a), g, kernel=kernel, stride=stride, dilation=dilation) \
        if _needs_grad(b) else None
    return ga, gb


define("unfold_matmul", MATMUL, _unfold_matmul_infer, _unfold_matmul_impl, _unfold_matmul_grad,
       arity=2, doc="a convolution's product: unfold(x) as (N*oh*ow, kh*kw*C) rows @ w")
define("matmul_unfold", MATMUL, _matmul_unfold_infer, _matmul_unfold_impl, _matmul_unfold_grad,
       arity=2, doc="a @ unfold(x) as (N*oh*ow, kh*kw*C) rows: a conv's weight gradient")
define("matmul_fold", MATMUL, _matmul_fold_infer, _matmul_fold_impl, _matmul_fold_grad,
       arity=2, doc="fold(a @ b as (N, oh, ow, kh, kw, C) windows): a conv's input gradient "
       "(NCHW; (N, H, W, C) with channels_last=True)")


define("take", INDEX, _take_infer, _take_impl,
       lambda g, out, x, idx, axis: (
           P.index_add(P.full(shape=x.shape, value=0, dtype=g.dtype, device=g.device), idx, g,
                       axis=axis), None),
       arity=2, reads=(1,), doc="out = x indexed along `axis` by an integer tensor of any shape")


def _check_index_infer(shapes, dtypes, size, op, kind, negative, ignore, message):
    if dtypes[0] not in (dt.int64, dt.int32):
        raise ShapeError(f"{op}: expected an int64 or int32 index, got {dtypes[0].name}",
                         IndexError)
    return shapes[0], dtypes[0]


class BoundsError(RuntimeError):
    """A bounds check's RuntimeError (an op PyTorch raises RuntimeError for): the user's error,
    which a compiled replay raises as it is, as it does an IndexError."""


class BoundsIndexError(IndexError):
    """A bounds check's IndexError (an op PyTorch raises IndexError for): its message names
    the user's op already, so the dispatcher adds only the user's line."""


class BoundsValueError(ValueError):
    """A value check's ValueError (`check_values`: a negative variance), raised as the user's."""


BOUNDS_ERRORS = (BoundsIndexError, BoundsError, BoundsValueError)
# the primitives whose impl raises one of those (an executor remembers where each was traced)
CHECKING_OPS = frozenset({"check_index", "check_values"})


def as_user_error(error: Exception, where: str = "") -> Exception:
    """A bounds check's error as eager code raises it to the user: a plain IndexError or
    RuntimeError with its message (naming the user's op), `where` (` (at file:line)`) added."""
    kind = IndexError if isinstance(error, IndexError) else \
        ValueError if isinstance(error, ValueError) else RuntimeError
    return kind(f"{error}{where}")


_INDEX_ERRORS = {"IndexError": BoundsIndexError, "RuntimeError": BoundsError,
                 "ValueError": BoundsValueError}


def _check_index_impl(xp, idx, size, op, kind, negative, ignore, message):
    out = idx.copy()            # a fresh buffer: executors may reuse an op's output in place
    if idx.size == 0:
        return out
    low = -size if negative else 0
    if xp is np and low <= idx.min() and idx.max() < size:
        return out              # on the host, the common case: two reductions and no mask
    bad = (idx < low) | (idx >= size)
    if ignore is not None:
        bad &= idx != ignore
    deferred = getattr(_DEFERRED, "checks", None)
    if deferred is not None:
        deferred.append((bad.any(), _check_index_impl, (xp, idx, size, op, kind, negative,
                                                         ignore, message)))
        return out
    if bool(bad.any()):
        value = int(idx[bad].ravel()[0])
        raise _INDEX_ERRORS[kind](f"{op}: {message.format(value)}")
    return out


# The bounds check of every op that indexes by a tensor's values (gather, index_select, take,
# embedding, class targets, tensor indexing): the identity on valid indices, an error raised
# by the executor otherwise. Compiled code keeps it as an extern step, so a replay checks
# exactly what eager checks; `negative` admits [-size, 0) (Python indexing), `ignore` one
# value (nll_loss's ignore_index). `message` is what follows `op: ` in the error, the first bad
# value at its `{}`: the words eager code uses, so a replay's error reads as eager's.
define("check_index", INDEX, _check_index_infer, _check_index_impl, None, arity=1,
       doc="idx unchanged; raises `kind` when a value is outside [0 or -size, size)")


def _check_values_infer(shapes, dtypes, op, kind, message):
    if dtypes[1] is not dt.bool_:
        raise ShapeError(f"{op}: a value check takes a bool condition, got {dtypes[1].name}")
    if tuple(shapes[1]) != tuple(shapes[0]):
        raise ShapeError(f"{op}: a value check's condition has shape {list(shapes[1])}, its "
                         f"values {list(shapes[0])}")
    return shapes[0], dtypes[0]


def _check_values_impl(xp, x, ok, op, kind, message):
    out = x.copy()              # a fresh buffer, as check_index's
    if ok.size == 0:
        return out
    deferred = getattr(_DEFERRED, "checks", None)
    if deferred is not None:    # capturing a CUDA graph: checked after it ran
        deferred.append((~ok.all(), _check_values_impl, (xp, x, ok, op, kind, message)))
        return out
    if not bool(ok.all()):
        bad = x[~ok].ravel()[0]
        raise _INDEX_ERRORS[kind](f"{op}: {message.format(bad.item())}")
    return out


# A check on a tensor's values that eager code makes by reading them (gaussian_nll_loss's
# `var >= 0`, binary_cross_entropy's probabilities in [0, 1]): `x` unchanged where `ok` holds
# everywhere, else `kind` raised with `message`, the first failing value of `x` at its `{}`.
# Traced, it is a graph node whose output the op then uses, so a compiled replay checks what
# eager mode checks (an extern step, as check_index) instead of the call breaking the graph.
define("check_values", INDEX, _check_values_infer, _check_values_impl,
       lambda g, out, x, ok, **attrs: (g, None), arity=2, reads=(),
       doc="x unchanged; raises `kind` when the bool `ok` is False anywhere")


def _scatter_infer(shapes, dtypes, axis):
    _check_index(dtypes, "index_add")
    base, idx, src = shapes
    want = base[:axis] + idx + base[axis + 1:]
    if tuple(src) != want:
        raise ShapeError(f"index_add: source shape {list(src)} should be {list(want)} for base "
                         f"{list(base)} and index {list(idx)} along dim {axis}")
    if dtypes[2] is not dtypes[0]:
        raise ShapeError(f"index_add: source dtype {dtypes[2].name} differs from the base's "
                         f"{dtypes[0].name}")
    return base, dtypes[0]


def _index_add_impl(xp, base, idx, src, axis):
    out = base.copy()
    where = (slice(None),) * axis + (idx,)
    xp.add.at(out, where, src)
    return out


def _index_put_impl(xp, base, idx, src, axis):
    out = base.copy()
    out[(slice(None),) * axis + (idx,)] = src
    return out


def _index_put_grad(g, out, base, idx, src, axis):
    written = P.index_put(P.full(shape=base.shape, value=True, dtype=dt.bool_, device=g.device),
                          idx, P.full(shape=src.shape, value=False, dtype=dt.bool_,
                                      device=g.device), axis=axis)
    return P.where(written, g, 0.0), None, P.take(g, idx, axis=axis)


define("index_add", INDEX, _scatter_infer, _index_add_impl,
       lambda g, out, base, idx, src, axis: (g, None, P.take(g, idx, axis=axis)), arity=3,
       reads=(1,), doc="out = base, plus src added at the positions idx names along `axis`")
define("index_put", INDEX, _scatter_infer, _index_put_impl, _index_put_grad, arity=3, reads=(1,),
       doc="out = base, with src written at the positions idx names along `axis`")


# ----------------------------------------------------------------------------- batch norm

# Training-mode batch normalization, x (N, C, ...) normalized over every dim but the channels
# with its own batch statistics. As a composite it cost ~50 dispatches and ~17 full-size passes
# per layer (the statistics' gradient alone takes ~8); here the forward is one call, and the
# backward one call in the closed form dx = invstd * (g - mean(g) - xhat * mean(g * xhat)).
# The statistics for the running averages come from batch_stats, which has no gradient. (The
# NumPy backend, kiln.runtime.numpy_backend, runs these on x as a (rows, C) matrix.)

def _bn_check(shapes, dtypes, name):
    if len(shapes[0]) < 2:
        raise ShapeError(f"{name}: expected an input with at least 2 dims (N, C, ...), got "
                         f"shape {list(shapes[0])}")
    if not dtypes[0].is_floating_point:
        raise ShapeError(f"{name}: expected a floating-point input, got {dtypes[0].name}",
                         TypeError)


def _bn_infer(shapes, dtypes, eps):
    _bn_check(shapes, dtypes, "batch_norm")
    return shapes[0], dtypes[0]


def _bn_backward_infer(shapes, dtypes, eps):
    if not shapes[0] == shapes[1] == shapes[2]:
        raise ShapeError(f"batch_norm_backward: gradient, output and input shapes differ: "
                         f"{[list(s) for s in shapes]}")
    _bn_check(shapes[2:], dtypes[2:], "batch_norm_backward")
    return shapes[2], _same_dtype(dtypes)


def _bn_stats_infer(shapes, dtypes):
    _bn_check(shapes, dtypes, "batch_stats")
    return (2, shapes[0][1]), dtypes[0]


def _bn_moments(xp, x):
    """(mean, centered x, biased variance) per channel, keepdim, over every dim but 1."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    return mean, centered, (centered * centered).mean(axis=axes, keepdims=True)


def _bn_impl(xp, x, eps):
    _, centered, var = _bn_moments(xp, x)
    return centered * (1 / xp.sqrt(var + eps))


def _bn_backward_impl(xp, g, xhat, x, eps):
    _, _, var = _bn_moments(xp, x)
    axes = (0,) + tuple(range(2, x.ndim))
    mean_g = g.mean(axis=axes, keepdims=True)
    mean_gx = (g * xhat).mean(axis=axes, keepdims=True)
    return (g - mean_g - xhat * mean_gx) * (1 / xp.sqrt(var + eps))


def _bn_stats_impl(xp, x):
    mean, _, var = _bn_moments(xp, x)
    return xp.stack([mean.reshape(x.shape[1]), var.reshape(x.shape[1])])


def _bn_backward_grad(h, dx, g, xhat, x, eps):
    # dx = invstd(x) * (g - mean(g) - xhat * mean(g * xhat)), with g, xhat and x independent
    # inputs: linear and self-adjoint in g; in xhat through the last term; in x through invstd,
    # whose derivative is -invstd^3 * (x - mean(x)) / n
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axes, keepdim=True)
    centered = x - mean
    invstd = P.div(1.0, P.sqrt((centered * centered).mean(axes, keepdim=True) + eps))
    mean_g, mean_gx = g.mean(axes, keepdim=True), (g * xhat).mean(axes, keepdim=True)
    grad_g = P.batch_norm_backward(h, xhat, x, eps=eps)
    grad_xhat = -(invstd * (h * mean_gx + g * (h * xhat).mean(axes, keepdim=True)))
    projected = g - mean_g - xhat * mean_gx
    grad_x = -(invstd * invstd * invstd * centered * (h * projected).mean(axes, keepdim=True))
    return grad_g, grad_xhat, grad_x


# Their decompositions, for the compiler: the statistics become sums fused with the passes
# around them (to the fusion pass these primitives would be opaque externs), in the order each
# primitive computes. `b.op(name, *inputs, **attrs)` appends a node to the graph being rewritten.

def _channel_mean(b, x):
    """The mean of `x` (N, C, ...) over every dim but 1, as (1, C, 1, ...)."""
    total = b.op("sum", x, axes=(0,) + tuple(range(2, len(x.shape))), keepdim=True)
    return b.op("mul", total, 1.0 / (math.prod(x.shape) // x.shape[1]))


def _bn_ops_statistics(b, x, eps):
    """(centered x, 1 / sqrt(biased variance + eps)), per channel."""
    centered = b.op("sub", x, _channel_mean(b, x))
    var = _channel_mean(b, b.op("mul", centered, centered))
    return centered, b.op("div", 1.0, b.op("sqrt", b.op("add", var, eps)))


def _bn_decompose(b, x, eps):
    centered, invstd = _bn_ops_statistics(b, x, eps)
    return b.op("mul", centered, invstd)


def _bn_backward_decompose(b, g, xhat, x, eps):
    # invstd * (g - xhat * mean(g * xhat) - mean(g)), in the order the primitive computes it
    _, invstd = _bn_ops_statistics(b, x, eps)
    out = b.op("sub", g, b.op("mul", xhat, _channel_mean(b, b.op("mul", g, xhat))))
    out = b.op("sub", out, _channel_mean(b, g))
    return b.op("mul", out, invstd)


def _bn_stats_decompose(b, x):
    # the same keepdim mean and variance nodes as _bn_decompose's, so CSE merges the two
    mean = _channel_mean(b, x)
    centered = b.op("sub", x, mean)
    var = _channel_mean(b, b.op("mul", centered, centered))
    rows = (b.op("reshape", v, shape=(1, x.shape[1])) for v in (mean, var))
    return b.op("cat", *rows, axis=0)


define("batch_norm", NORMALIZE, _bn_infer, _bn_impl,
       lambda g, out, x, eps: (P.batch_norm_backward(g, out, x, eps=eps),), arity=1,
       output=COPIED, decompose=_bn_decompose,
       doc="x normalized per channel (dim 1) by its batch mean and variance: training-mode "
           "batch norm without the affine part")
define("batch_norm_backward", NORMALIZE, _bn_backward_infer, _bn_backward_impl,
       _bn_backward_grad, arity=3, decompose=_bn_backward_decompose,
       doc="batch_norm's input gradient from (output gradient, output, input)")
define("batch_stats", NORMALIZE, _bn_stats_infer, _bn_stats_impl, None, arity=1,
       decompose=_bn_stats_decompose,
       doc="(2, C): per-channel batch mean and biased variance of x (N, C, ...)")


# ----------------------------------------------------------------------------- matmul

def _matmul_infer(shapes, dtypes):
    a, b = shapes
    if len(a) < 2 or len(b) < 2 or a[:-2] != b[:-2] or a[-1] != b[-2]:
        raise ShapeError(f"mat1 and mat2 shapes cannot be multiplied "
                         f"({'x'.join(map(str, a))} and {'x'.join(map(str, b))})")
    if dtypes[0] is dt.bool_:
        raise ShapeError("\"addmm_impl_cpu_\" not implemented for 'Bool' (as PyTorch): "
                         "multiply bool matrices as .long() or .float()", NotImplementedError)
    return a[:-1] + b[-1:], _same_dtype(dtypes)


def _swap_last(t):
    perm = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return P.permute(t, perm=perm)


def _needs_grad(x) -> bool:
    """Whether an input wants a gradient: static metadata, so rules may branch on it."""
    return getattr(x, "requires_grad", False)


def _matmul_grad(g, out, a, b):
    # skip the product nobody needs: a matmul is the one gradient too costly to waste
    grad_a = P.matmul(g, _swap_last(b)) if _needs_grad(a) else None
    if not _needs_grad(b):
        return grad_a, None
    if b.ndim == 2 and not b.is_contiguous() and b.stride() == (1, b.shape[0]):
        # b is a transposed matrix (`weight.t()` in `linear`; told by its strides, as `b.t()`
        # would be one more dispatch and a dead node in a trace): its gradient as the
        # transpose of a row-major product, so the weight's own gradient comes out row-major,
        # as the weight is, and `.grad` gets it without a transposing copy
        return grad_a, _swap_last(P.matmul(_swap_last(g), a))
    return grad_a, P.matmul(_swap_last(a), g)


def _matmul_reads(inputs) -> tuple:
    # each factor is read only for the other's gradient: `x @ w` with a constant x reads x only
    a, b = inputs
    return tuple(i for i, other in ((0, b), (1, a)) if _needs_grad(other))


define("matmul", MATMUL, _matmul_infer, lambda xp, a, b: xp.matmul(a, b), _matmul_grad, arity=2,
       reads=_matmul_reads,
       doc="batched matrix product; batch dims equal, at least 2-D (callers broadcast)")


# ----------------------------------------------------------------------------- creation, random

def _full_infer(shapes, dtypes, shape, value, dtype):
    if any(d < 0 for d in shape):
        raise ShapeError(f"Trying to create tensor with negative dimension: {list(shape)}")
    return tuple(shape), dtype


define("full", CREATION, _full_infer,
       lambda xp, shape, value, dtype: xp.full(shape, value, dtype=dtype.np), None, arity=0)


def _arange_infer(shapes, dtypes, start, stop, step, dtype):
    if step == 0:
        raise ShapeError("arange: step must be nonzero")
    return (max(0, math.ceil((stop - start) / step)),), dtype


def _arange_impl(xp, start, stop, step, dtype):
    # integers into an integer dtype they fit: made in it (on a GPU, one kernel instead of an
    # int64 arange and a cast); otherwise made as NumPy/CuPy's arange and cast, which keeps
    # floating steps' values exactly as they were
    np_dtype = np.dtype(dtype.np)
    if np_dtype.kind in "iu" and all(type(v) is int for v in (start, stop, step)):
        n = max(0, -(-(stop - start) // step))
        info = np.iinfo(np_dtype)
        if not n or info.min <= min(start, start + (n - 1) * step) and \
                max(start, start + (n - 1) * step) <= info.max:
            return xp.arange(start, stop, step, dtype=np_dtype)
    return xp.arange(start, stop, step).astype(np_dtype, copy=False)


define("arange", CREATION, _arange_infer, _arange_impl, None, arity=0)


def _rand_infer(shapes, dtypes, shape, dtype):
    if dtypes[0] is not dt.int64 or shapes[0] != ():
        raise ShapeError("rand: the seed must be a 0-d int64 tensor")
    return tuple(shape), dtype


def _rand_impl(xp, seed, shape, dtype):
    gen = np.random.Generator(np.random.Philox(key=int(seed)))
    if dtype.np in (np.float32, np.float64):
        values = gen.random(shape, dtype=dtype.np)          # drawn at the precision asked for
    else:
        values = gen.random(shape, dtype=np.float64).astype(dtype.np)
    return values if xp is np else xp.asarray(values)


define("rand", RANDOM, _rand_infer, _rand_impl, None, arity=1,
       doc="uniform [0, 1) numbers, a pure function of the seed input (so replays match eager)")
