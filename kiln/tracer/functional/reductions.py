"""Reductions: sum, mean, amax/max/argmax, prod, var/std, logsumexp, all/any, norm, trace,
and the cumulative cumsum/cumprod."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import PRIMITIVES, P, Primitive
from kiln.ir.ops_extra import svd_factors
from kiln.runtime.device import CPU
from kiln.runtime.numpy_backend import numpy_impl
from kiln.tracer import autograd as _autograd
from kiln.tracer import strides as _strides
from kiln.tracer.errors import op_error
from kiln.tracer.functional.common import _axes, _floating, _norm_dim, _py_max, full, zeros
from kiln.tracer.functional.elementwise import (_bool, abs, eq, exp, gt, isnan, log, logical_not,
                                                lt, maximum, minimum, ne, pow, remainder, sign,
                                                sqrt)
from kiln.tracer.functional.indexing import gather, where
from kiln.tracer.functional.shapes import (_py_any, cat, diagonal, movedim, narrow, reshape,
                                           squeeze, unsqueeze)
from kiln.tracer.provenance import composite
from kiln.tracer.strides import settle
from kiln.tracer.tensor import OBSERVED, STATE, TRACING, Tensor
from kiln.tracer.unsigned import check as _check_unsigned


# ----------------------------------------------------------------------------- reductions

def _widened(x: Tensor) -> Tensor:
    """x as float32 when it is float16 or bfloat16 (dt.HALF): PyTorch accumulates reductions
    of half values in float (the sum of 4096 values near 100 overflows float16's 65504 on the
    way to a mean of 100).
    A cast, not a wider accumulator inside the primitive, so a trace records it and every
    backend computes in float32 too."""
    return P.cast(x, dtype=dt.float32) if x.dtype in dt.HALF else x


def _narrowed(out: Tensor, dtype: dt.DType) -> Tensor:
    """A result computed on `_widened` input, back in the input's dtype."""
    return out if out.dtype is dtype else P.cast(out, dtype=dtype)


def sum(input, dim=None, keepdim=False, *, dtype=None):
    if dim is None and dtype is None and input.dtype.is_floating_point and input._data.ndim \
            and input.dtype not in dt.HALF:
        if _eager_ok(input):
            return _eager_sum_all(input, bool(keepdim))
        return P.sum(input, axes=tuple(range(input._data.ndim)), keepdim=bool(keepdim))
    if dtype is None and input.dtype in dt.HALF and input._data.ndim:
        return _narrowed(sum(_widened(input), dim, keepdim), input.dtype)
    if dtype is not None:
        input = input.to(dtype)
    elif input.dtype.category < dt.FLOAT and input.dtype is not dt.int64:
        input = P.cast(input, dtype=dt.int64)     # PyTorch sums bools and ints as int64
    ndim = input._data.ndim
    axes = _axes(dim, ndim)
    if ndim == 0:
        return input.clone()
    out = P.sum(input, axes=axes, keepdim=bool(keepdim))
    if dim is not None:
        _autograd.set_name(out.grad_fn, "SumBackward1")     # PyTorch's node of sum over dims
    return out


def nansum(input, dim=None, keepdim=False, *, dtype=None):
    if not input.dtype.is_floating_point:      # no NaN to skip; ints still sum as int64
        return sum(input, dim, keepdim, dtype=dtype)
    return sum(where(isnan(input), 0.0, input), dim, keepdim, dtype=dtype)


# Eager mean's fast path: sum then divide as the composite below does, with the same NumPy
# calls (so bitwise the same values) but one dispatch-free step and one autograd node instead
# of two dispatches and two nodes (~7.9 us -> ~3 us on 16 elements). A trace still records the
# composite; this node's "primitive" exists only for autograd, like softmax's.

def _mean_grad(g, out, x, axes, keepdim, count):
    # the composite's gradient, in its order: div's (g / count), then sum's (broadcast back)
    keep = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    return (P.expand(P.reshape(P.div(g, count), shape=keep), shape=tuple(x.shape)),)


_MEAN = Primitive("mean", "custom", None, None, _mean_grad, 1, reads=(),
                  doc="eager mean's autograd node (never traced)")
_NUMPY_SUM = numpy_impl(PRIMITIVES["sum"])        # the sum the dispatcher runs


def _eager_ok(input) -> bool:
    """Whether a reduction of `input` may skip the dispatcher: an eager (no trace) CPU
    float32/float64 tensor of at least one dimension whose autograd history is current (a
    stale view takes the dispatcher's path, which refreshes it)."""
    return type(input) is Tensor and not (TRACING[0] and STATE.tracer is not None) and \
        not OBSERVED[0] and \
        input.device is CPU and (input.dtype is dt.float32 or input.dtype is dt.float64) and \
        input._data.ndim > 0 and (input._base is None or input._base[3] == input._version[0])


def _eager_sum_all(input, keepdim: bool) -> Tensor:
    """`P.sum` over every dim, as the dispatcher runs it (the same NumPy call and the same
    autograd node, SumBackward0) without its per-call rule lookup (~1 us of a 16-element
    sum's ~3.5 us)."""
    data = input._data
    axes = _ALL_AXES[data.ndim] if data.ndim < len(_ALL_AXES) else tuple(range(data.ndim))
    out = _NUMPY_SUM(np, data, axes, keepdim)
    if type(out) is not np.ndarray:
        out = np.asarray(out)                      # NumPy hands back scalars for 0-d results
    result = Tensor._make(out, input.dtype, CPU)
    if input.requires_grad and STATE.grad_enabled:
        _autograd.record(_SUM, (input,), {"axes": axes, "keepdim": keepdim}, result)
    return result


_ALL_AXES = [tuple(range(n)) for n in range(9)]
_SUM = PRIMITIVES["sum"]


def _eager_mean(input, dim, keepdim):
    """mean of an eager CPU float32/float64 tensor without dispatches, or None where the
    composite must run (a trace, another dtype or device, 0-d, an empty reduction, a stale
    view)."""
    if not _eager_ok(input):
        return None
    data = input._data
    axes = _axes(dim, data.ndim)
    shape = data.shape
    count = math.prod(shape[a] for a in axes)
    if not count:
        return None
    keepdim = bool(keepdim)
    count = float(count)
    out = _NUMPY_SUM(np, data, axes, keepdim) / count
    if type(out) is not np.ndarray:
        out = np.asarray(out)                      # NumPy hands back scalars for 0-d results
    elif out.strides != _strides.contiguous(out.shape, out.itemsize):
        out = out.copy()                           # row-major, as PyTorch's reductions
    if out.dtype != data.dtype:                    # pragma: no cover - NumPy 1.x promotion
        out = out.astype(data.dtype)
    result = Tensor._make(out, input.dtype, CPU)
    if input.requires_grad and STATE.grad_enabled:
        _autograd.record(_MEAN, (input,), {"axes": axes, "keepdim": keepdim, "count": count},
                         result)
    return result


@composite
def mean(input, dim=None, keepdim=False, *, dtype=None):
    if dtype is None:
        result = _eager_mean(input, dim, keepdim)
        if result is not None:
            return result
    if dtype is not None:
        input = input.to(dtype)
    if not input.dtype.is_floating_point and not input.dtype.is_complex:
        raise op_error("mean", "could not infer output dtype. Input dtype must be either a "
                       f"floating point or complex dtype. Got: {input.dtype.name}")
    if input.dtype in dt.HALF:
        return _narrowed(mean(_widened(input), dim, keepdim), input.dtype)
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
    if not (input.dtype.is_floating_point or input.dtype.is_complex):
        raise op_error("nanmean", f"nanmean(): expected input to have floating point or complex "
                       f"dtype but got {dt.SCALAR_TYPE_NAMES[input.dtype]} ({input.dtype.name})")
    if input.dtype in dt.HALF:
        return _narrowed(nanmean(_widened(input), dim, keepdim), input.dtype)
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
    if input.dtype.category == dt.INT:
        # ~x = -x - 1 reverses the order of every integer dtype without overflowing, where
        # -x sends int8's -128 to itself (and uint8's values nowhere near their order)
        return P.bitwise_not(amax(P.bitwise_not(input), dim, keepdim))
    return P.neg(amax(P.neg(input), dim, keepdim))


def max(input, dim=None, keepdim=False, *, other=None):
    if isinstance(dim, Tensor):
        return maximum(input, dim)
    if dim is None:
        return amax(input)
    return _at_indices(input, dim, keepdim, _argmax(input, dim, keepdim=True))


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
    return _at_indices(input, dim, keepdim, _argmin(input, dim, keepdim=True))


def argmax(input, dim=None, keepdim=False):
    _refuse_bool("argmax", input)
    return _argmax(input, dim, keepdim)


def argmin(input, dim=None, keepdim=False):
    _refuse_bool("argmin", input)
    return _argmin(input, dim, keepdim)


def _refuse_bool(op: str, input) -> None:
    if input.dtype is dt.bool_:
        raise op_error(op, f"does not support bool input (as PyTorch); take "
                       f"x.to(torch.uint8).{op}() instead")


def _argmax(input, dim, keepdim):
    """argmax on any dtype: max(dim) and min(dim) take bool tensors where argmax does not."""
    if dim is None:
        flat = reshape(input, (-1,))
        out = P.argmax(flat, axis=0, keepdim=False)
        return reshape(out, (1,) * input.ndim) if keepdim else out
    if input.ndim == 0:
        return zeros((), dtype=dt.int64, device=input.device)
    return P.argmax(input, axis=_norm_dim(dim, input.ndim), keepdim=bool(keepdim))


def _argmin(input, dim, keepdim):
    if input.dtype.category <= dt.INT:
        # ~x reverses the order of bools and of every integer dtype exactly (see amin)
        return _argmax(P.bitwise_not(input), dim, keepdim)
    return _argmax(P.neg(input), dim, keepdim)


def prod(input, dim=None, keepdim=False, *, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    elif input.dtype.category < dt.FLOAT:
        input = P.cast(input, dtype=dt.int64)
    if input.ndim == 0:
        return input.clone()
    if input.dtype in dt.HALF:
        return _narrowed(prod(_widened(input), dim, keepdim), input.dtype)
    if dim is None:
        return P.prod(reshape(input, (-1,)), axes=(0,), keepdim=False)
    return P.prod(input, axes=_axes(dim, input.ndim), keepdim=bool(keepdim))


def _unbiased_first(dim, unbiased):
    """(dim, unbiased) of torch's `var(input, unbiased)` form: a bool second argument is
    `unbiased`, over all elements."""
    if isinstance(dim, bool):
        return None, dim
    return dim, unbiased


@composite
def var(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    dim, unbiased = _unbiased_first(dim, unbiased)
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    _refuse_integer_spread("var", input)
    x = input
    if x.dtype in dt.HALF:
        return _narrowed(var(_widened(x), dim, unbiased, keepdim, correction=correction),
                         x.dtype)
    axes = _axes(dim, x.ndim)
    n = math.prod(x.shape[a] for a in axes) if x.ndim else 1
    centered = x - mean(x, axes if x.ndim else None, keepdim=True)
    if centered.dtype.is_complex:      # the mean squared distance |x - mean|^2: real
        centered = abs(centered)
    return sum(centered * centered, axes if x.ndim else None, keepdim) / _py_max(n - correction, 0)


def _refuse_integer_spread(op: str, input) -> None:
    if not (input.dtype.is_floating_point or input.dtype.is_complex):
        raise op_error(op, f"std and var only support floating point and complex dtypes, "
                       f"got {input.dtype.name}; convert with .float() first")


@composite
def std(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    dim, unbiased = _unbiased_first(dim, unbiased)
    if isinstance(input, Tensor):
        _refuse_integer_spread("std", input)
    if isinstance(input, Tensor) and input.dtype in dt.HALF:
        return _narrowed(std(_widened(input), dim, unbiased, keepdim, correction=correction),
                         input.dtype)
    v = var(input, dim, unbiased, keepdim, correction=correction)
    # where the variance is 0, sqrt's gradient is infinite; PyTorch defines std's as 0 there
    zero = P.eq(v, 0)
    return P.where(zero, 0.0, sqrt(P.where(zero, 1.0, v)))


@composite
def var_mean(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    dim, unbiased = _unbiased_first(dim, unbiased)
    return (var(input, dim, unbiased, keepdim, correction=correction),
            mean(input, dim, keepdim))


@composite
def std_mean(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    dim, unbiased = _unbiased_first(dim, unbiased)
    return (std(input, dim, unbiased, keepdim, correction=correction),
            mean(input, dim, keepdim))


@composite
def logsumexp(input, dim=None, keepdim=False):
    x = _floating(input)
    if x.dtype in dt.HALF:
        return _narrowed(logsumexp(_widened(x), dim, keepdim), x.dtype)
    axes = _axes(dim, x.ndim)
    if x.ndim == 0:     # complex: log(exp(x)) brings the imaginary part into (-pi, pi]
        return reshape(logsumexp(reshape(x, (1,)), 0), ()) if x.dtype.is_complex else x.clone()
    if _py_any(x.shape[a] == 0 for a in axes):
        m = zeros(1, dtype=x.dtype, device=x.device)     # an empty sum: log(0) = -inf
    else:
        # complex: shifted by the largest real part, which sets the magnitudes
        m = P.max(P.real(x) if x.dtype.is_complex else x, axes=axes, keepdim=True).detach()
        m = P.where(P.eq(P.abs(m), math.inf), 0.0, m)     # all -inf rows stay -inf, not nan
    out = P.log(P.sum(P.exp(x - m), axes=axes, keepdim=True)) + m
    return out if keepdim else squeeze(out, axes)


def all(input, dim=None, keepdim=False):
    # negations as primitives: PyTorch's all takes uint16/32/64, its logical_not does not
    out = P.bitwise_not(_any(P.bitwise_not(_bool(input)), dim, keepdim))
    return P.cast(out, dtype=dt.uint8) if input.dtype is dt.uint8 else out


def any(input, dim=None, keepdim=False):
    out = _any(_bool(input), dim, keepdim)
    return P.cast(out, dtype=dt.uint8) if input.dtype is dt.uint8 else out   # as PyTorch


def _any(b, dim, keepdim):
    if b.ndim == 0:
        return b.clone()
    return P.gt(P.max(P.cast(b, dtype=dt.int32), axes=_axes(dim, b.ndim), keepdim=bool(keepdim))
                if b.numel() else P.sum(P.cast(b, dtype=dt.int32), axes=_axes(dim, b.ndim),
                                        keepdim=bool(keepdim)), 0)


def count_nonzero(input, dim=None):
    _check_unsigned("count_nonzero", input)
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
    if dtype is None and input.dtype.category <= dt.INT:
        raise op_error("norm", f"linalg.vector_norm: Expected a floating point or complex tensor "
                       f"as input. Got {dt.SCALAR_TYPE_NAMES[input.dtype]} ({input.dtype.name}); "
                       "convert it with .float() first")
    x = _floating(input if dtype is None else input.to(dtype))
    if p == "nuc" and x.dtype.is_complex:
        return _nuclear_norm(x, (-2, -1) if dim is None else dim, keepdim)
    if x.dtype.is_complex:             # every p-norm of complex numbers is that of |x|
        x = abs(x)
    if x.dtype in dt.HALF:
        return _narrowed(norm(_widened(x), p, dim, keepdim), x.dtype)
    if p == "nuc":
        return _nuclear_norm(x, (-2, -1) if dim is None else dim, keepdim)
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


def _nuclear_norm(x, dim, keepdim):
    """The sum of the singular values of the matrices over the two dims `dim`."""
    if isinstance(dim, int) or len(dim) != 2:
        raise op_error("norm", f"p='nuc' takes two dims (the matrices'), got dim={dim}")
    d0, d1 = sorted(_norm_dim(d, x.ndim) for d in dim)
    m = movedim(x, (d0, d1), (-2, -1))
    if m.dtype.is_complex:
        # the real block matrix [[Re, -Im], [Im, Re]] has each singular value of m twice
        re, im = P.real(m), P.imag(m)
        m = cat([cat([re, -im], -1), cat([im, re], -1)], -2)
        out = sum(svd_factors(m)[1], -1) / 2
    else:
        out = sum(svd_factors(m)[1], -1)
    return unsqueeze(unsqueeze(out, d0), d1) if keepdim else out


@composite
def dist(input, other, p=2):
    return norm(input - other, p)


def cumsum(input, dim, *, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    elif input.dtype.category < dt.FLOAT:
        input = input.to(dt.int64)
    if input.ndim == 0:
        return input.clone()
    if input.dtype in dt.HALF:
        return _narrowed(cumsum(_widened(input), dim), input.dtype)
    return P.cumsum(input, axis=_norm_dim(dim, input.ndim))


@composite
def cumprod(input, dim, *, dtype=None):
    # row-major, as PyTorch's cumulative kernels write, whatever the input's layout
    return settle(_cumprod(input, dim, dtype), "contiguous")


def _cumprod(input, dim, dtype):
    if dtype is not None:
        input = input.to(dtype)
    elif input.dtype.category < dt.FLOAT:
        input = input.to(dt.int64)        # PyTorch multiplies bools and ints as int64
    if input.dtype.category == dt.INT:
        return _scan_product(input, dim)
    if input.dtype in dt.HALF:
        return _narrowed(_scan_product(_widened(input), dim), input.dtype)
    if input.dtype is dt.float32 and input.device.type == "cpu":
        # in float64 and rounded once, as PyTorch's CPU kernel accumulates
        return _scan_product(input.to(dt.float64), dim).to(dt.float32)
    return _scan_product(input, dim)


def _scan_product(x: Tensor, dim: int) -> Tensor:
    """The running product: a scan that multiplies each element by the one `step` places
    before it, for step = 1, 2, 4, ... (log2(n) elementwise products, each a primitive, so
    autograd and the compiler see plain products). Integers come out exact and wrap around as
    PyTorch's; floats carry log2(n) roundings per element, and zeros, signs, infinities and
    NaNs come out as in the sequential product (inf then 0 gives NaN)."""
    if x.ndim == 0:
        return x.clone()
    d = _norm_dim(dim, x.ndim)
    n, step = x.shape[d], 1
    while step < n:
        pad = list(x.shape)
        pad[d] = step
        ones = full(tuple(pad), 1, dtype=x.dtype, device=x.device)
        x = x * cat([ones, narrow(x, d, 0, n - step)], d)
        step *= 2
    return x


def trace(input):
    if input.dtype is dt.bool_:
        raise op_error("trace", "\"trace\" not implemented for 'Bool' (as PyTorch); take "
                       "x.long().trace() instead", NotImplementedError)
    return sum(diagonal(input))
