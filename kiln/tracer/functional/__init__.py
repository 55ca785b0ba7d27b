"""Public tensor operations, composed in Python from the primitives of `kiln.ir.ops`.

Type promotion, broadcasting and PyTorch's argument conventions (dim/keepdim, negative dims,
`alpha=`) are handled here; the arithmetic itself is always a primitive call, so autograd,
tracing and fusion see through every function in this package with no extra code.

One module per family, each importing only the ones before it (no cycles; a test reads the
imports, tests/test_layers.py):

    common          operand conversion, promotion, broadcasting, dims, creation shorthands
    elementwise     arithmetic, comparison, logic (one module: `div` and `clamp` compare,
                    `isclose` takes `abs`)
    activations     relu, gelu, silu, ...                      uses elementwise
    shapes          reshape, permute, cat, split, pad, tril, diagonal, ...
    indexing        where, gather/scatter, index_*, masked_*, nonzero, getitem    uses shapes
    reductions      sum, mean, max, var, norm, cumsum, trace, ...    uses elementwise, shapes,
                    indexing
    matrix          matmul, einsum, tensordot, ...             uses shapes, reductions
    softmax_family  softmax, log_softmax, softmin              uses shapes, reductions

This module only re-exports: every public name, and the few private helpers other tracer
modules use (`_as_tensor`, `_binary`, `_floating`, `_norm_dim`, `_shape_arg`, `_gather`).
Import from `kiln.tracer.functional`; inside the package, import from the family module.
The names autocast's tables list are exported wrapped in their cast policy (`kiln.tracer.autocast`);
the family modules keep the plain functions, which composites call.
"""

from kiln.tracer.functional.common import (_as_tensor, result_type, _binary,  # noqa: F401
                                           _floating, _norm_dim, arange, full, zeros, zeros_like,
                                           ones_like)
from kiln.tracer.functional.elementwise import (add, sub, rsub, mul, div, true_divide,  # noqa: F401
                                                divide, multiply, subtract, floor_divide, remainder,
                                                fmod, pow, float_power, neg, negative, abs,
                                                absolute, sign, reciprocal, square, exp, log, log1p,
                                                expm1, sqrt, sin, cos, tanh, sigmoid, erf, rsqrt,
                                                tan, exp2, log2, log10, floor, ceil, trunc, fix,
                                                round, frac, maximum, minimum, clamp, clip,
                                                clamp_min, clamp_max, lerp, addcmul, addcdiv, hypot,
                                                atan, eq, ne, lt, le, gt, ge, less, less_equal,
                                                greater, greater_equal, not_equal, logical_not,
                                                logical_and, logical_or, logical_xor, bitwise_and,
                                                bitwise_or, bitwise_xor, bitwise_not, isnan, isinf,
                                                isposinf, isneginf, isfinite, nan_to_num, allclose,
                                                isclose, equal)
from kiln.tracer.functional.activations import (relu, relu6, hardtanh, leaky_relu,  # noqa: F401
                                                elu, selu, gelu, silu, mish, softplus, logsigmoid,
                                                hardsigmoid, hardswish, softsign, tanhshrink)
from kiln.tracer.functional.shapes import (_shape_arg, reshape, view, view_as,  # noqa: F401
                                           reshape_as, flatten, unflatten, squeeze, unsqueeze,
                                           permute, transpose, swapaxes, swapdims, t, movedim,
                                           moveaxis, expand, expand_as, broadcast_to,
                                           broadcast_tensors, repeat, tile, cat, concat,
                                           concatenate, stack, hstack, vstack, narrow, split, chunk,
                                           tensor_split, unbind, select, flip, fliplr, flipud, roll,
                                           pad, contiguous, clone, tril, triu, diagonal, diag)
from kiln.tracer.functional.indexing import (where, repeat_interleave, index_select,  # noqa: F401
                                             select_rows, gather, _gather, scatter, scatter_add,
                                             index_add, index_fill, index_copy, masked_fill,
                                             masked_select, take, take_along_dim, one_hot, nonzero,
                                             argwhere, getitem, index_put, setitem_functional)
from kiln.tracer.functional.reductions import (sum, nansum, mean, nanmean,  # noqa: F401
                                               ReturnTypes, amax, amin, max, min, argmax, argmin,
                                               prod, var, std, var_mean, std_mean, logsumexp, all,
                                               any, count_nonzero, norm, dist, cumsum, cumprod,
                                               trace)
from kiln.tracer.functional.matrix import (matmul, mm, bmm, mv, dot, inner, outer,  # noqa: F401
                                           ger, addmm, baddbmm, einsum, tensordot)
from kiln.tracer.functional.softmax_family import softmax, log_softmax, softmin  # noqa: F401

# autocast's policy on the ops its tables name, before Tensor's methods are bound to them
import sys as _sys  # noqa: E402
from kiln.tracer import autocast as _autocast  # noqa: E402
_autocast.install(_sys.modules[__name__])
