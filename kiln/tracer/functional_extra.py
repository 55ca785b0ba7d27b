"""More public tensor operations (torch.* names), composed from primitives like `functional`.

Families: trigonometric/hyperbolic and special functions, rounding and bit tricks, sorting and
order statistics (sort, topk, median, quantile, ...), cumulative and histogram ops, shape
helpers (atleast_nd, block_diag, meshgrid, rot90, ...), scatters, linear-algebra shortcuts of
the torch namespace, window functions and real-tensor forms of complex helpers (kiln has no
complex dtype). Ops whose result size depends on the data (unique, bincount) read values into
Python, which a compiled function reports as a graph break.
"""

from __future__ import annotations

import builtins
import itertools
import math
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer import functional as F
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _as_tensor, _binary, _floating, _norm_dim
from kiln.tracer.provenance import composite
from kiln.tracer.tensor import Tensor

_py_max, _py_min, _py_sum, _py_abs = builtins.max, builtins.min, builtins.sum, builtins.abs
values_indices = F.ReturnTypes


def _f(x):
    return _floating(x if isinstance(x, Tensor) else _as_tensor(x))


# ----------------------------------------------------------------------------- elementwise math

def asin(input):
    return P.asin(_f(input))


def acos(input):
    return math.pi / 2 - P.asin(_f(input))


def atan(input):
    return P.atan(_f(input))


def atan2(input, other):
    a, b = _f(input), other
    return _binary(P.atan2, a, b if isinstance(b, Tensor) else float(b), float_only=True)


@composite
def sinh(input):
    x = _f(input)
    return (P.expm1(x) - P.expm1(-x)) * 0.5


@composite
def cosh(input):
    x = _f(input)
    return (P.exp(x) + P.exp(-x)) * 0.5


@composite
def asinh(input):
    return P.asinh(_f(input))


@composite
def acosh(input):
    return P.acosh(_f(input))


@composite
def atanh(input):
    return P.atanh(_f(input))


arcsin, arccos, arctan, arctan2, arcsinh, arccosh, arctanh = (asin, acos, atan, atan2, asinh,
                                                              acosh, atanh)


def deg2rad(input):
    return _f(input) * (math.pi / 180)


def rad2deg(input):
    return _f(input) * (180 / math.pi)


def lgamma(input):
    return P.lgamma(_f(input))


def digamma(input):
    return P.digamma(_f(input))


psi = digamma


def polygamma(n, input):
    return P.polygamma(_f(input), n=int(n))


def mvlgamma(input, p):
    x = _f(input)
    total = 0
    for j in range(int(p)):
        total = total + P.lgamma(x - j / 2)
    return total + p * (p - 1) / 4 * math.log(math.pi)


multigammaln = mvlgamma


def erfc(input):
    return P.erfc(_f(input))


def erfcx(input):
    return P.erfcx(_f(input))


def erfinv(input):
    return P.erfinv(_f(input))


def i0(input):
    return P.i0(_f(input))


def i0e(input):
    return P.i0e(_f(input))


def i1(input):
    return P.i1(_f(input))


def i1e(input):
    return P.i1e(_f(input))


def ndtr(input):
    return (1 + F.erf(_f(input) * (1 / math.sqrt(2)))) * 0.5


def ndtri(input):
    return P.ndtri(_f(input))


def log_ndtr(input):
    return P.log_ndtr(_f(input))


def igamma(input, other):
    a, x = _promote_float(input, other)
    return P.gammainc(a, x)


def igammac(input, other):
    a, x = _promote_float(input, other)
    return P.gammaincc(a, x)


gammainc, gammaincc = igamma, igammac


def zeta(input, other):
    a, x = _promote_float(input, other)
    return P.zeta(a, x)


def _promote_float(a, b):
    a = a if isinstance(a, Tensor) else _as_tensor(float(a), b if isinstance(b, Tensor) else None)
    b = b if isinstance(b, Tensor) else _as_tensor(float(b), a)
    kind = dt.promote(a.dtype, b.dtype)
    if not kind.is_floating_point:
        kind = dt.get_default_dtype()
    a, b = a.to(kind), b.to(kind)
    shape = tuple(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
    return F.expand(a, shape), F.expand(b, shape)


@composite
def logit(input, eps=None):
    x = _f(input)
    if eps is not None:
        x = F.clamp(x, eps, 1 - eps)
    return F.log(x / (1 - x))


def expit(input):
    return F.sigmoid(input)


def _x_times(x, log_y):
    # x * log(y), taken as 0 where x == 0 even when log(y) is infinite; the gradient for x
    # stays log(y) there, as in PyTorch
    return x * F.where(F.logical_and(F.eq(x, 0), F.isinf(log_y)), 0.0, log_y)


@composite
def xlogy(input, other):
    x, y = _promote_float(input, other)
    return _x_times(x, F.log(y))


@composite
def xlog1py(input, other):
    x, y = _promote_float(input, other)
    return _x_times(x, F.log1p(y))


@composite
def entr(input):
    x = _f(input)
    outside = F.where(F.eq(x, 0), F.zeros_like(x), _full_like(x, -math.inf))
    return F.where(F.gt(x, 0), -x * F.log(F.where(F.gt(x, 0), x, 1.0)),
                   F.where(F.isnan(x), x, outside))


@composite
def sinc(input):
    x = _f(input)
    px = x * math.pi
    safe = F.where(F.eq(x, 0), 1.0, px)
    return F.where(F.eq(x, 0), 1.0, F.sin(safe) / safe)


@composite
def logaddexp(input, other):
    a, b = _promote_float(input, other)
    m = F.maximum(a, b)
    finite = F.where(F.isinf(m), 0.0, m)
    return finite + F.log(F.exp(a - finite) + F.exp(b - finite))


@composite
def logaddexp2(input, other):
    a, b = _promote_float(input, other)
    return logaddexp(a * math.log(2), b * math.log(2)) / math.log(2)


def sgn(input):
    return F.sign(input)


def signbit(input):
    return P.signbit(input if input.dtype.is_floating_point else input.to(dt.float32))


def copysign(input, other):
    a, b = _promote_float(input, other)
    return P.copysign(a, b)


def heaviside(input, values):
    return F.where(F.eq(input, 0), F.expand(values, tuple(input.shape)) if isinstance(
        values, Tensor) else values, F.gt(input, 0).to(input.dtype))


def ldexp(input, other):
    return _f(input) * F.pow(2.0, other.to(_f(input).dtype) if isinstance(other, Tensor)
                             else float(other))


def frexp(input):
    x = _f(input)
    data = x._read("frexp()")
    mantissa, exponent = x.device.xp.frexp(data)
    Mant = namedtuple("frexp", ["mantissa", "exponent"])
    return Mant(Tensor._make(mantissa.astype(x.dtype.np), x.dtype, x.device),
                Tensor._make(exponent.astype(np.int32), dt.int32, x.device))


def nextafter(input, other):
    a, b = _promote_float(input, other)
    return P.nextafter(a, b)


def _integer_pair(a, b):
    a = a if isinstance(a, Tensor) else _as_tensor(int(a), b)
    b = b if isinstance(b, Tensor) else _as_tensor(int(b), a)
    kind = dt.promote(a.dtype, b.dtype)
    return a.to(kind), b.to(kind)


def gcd(input, other):
    return P.gcd(*_integer_pair(input, other))


def lcm(input, other):
    return P.lcm(*_integer_pair(input, other))


def bitwise_left_shift(input, other):
    return P.bitwise_left_shift(*_integer_pair(input, other))


def bitwise_right_shift(input, other):
    return P.bitwise_right_shift(*_integer_pair(input, other))


def fmax(input, other):
    """Maximum that ignores NaN (NaN only where both are NaN)."""
    return F.where(F.isnan(input), other, F.where(F.isnan(other), input,
                                                   F.maximum(input, other)))


def fmin(input, other):
    return F.where(F.isnan(input), other, F.where(F.isnan(other), input,
                                                   F.minimum(input, other)))


def positive(input):
    return input


multiply, subtract = F.mul, F.sub


# real-tensor forms of the complex helpers: kiln has no complex dtype
def conj(input):
    return input


conj_physical = resolve_conj = resolve_neg = conj


def real(input):
    return input


def angle(input):
    x = _f(input)
    return F.where(F.lt(x, 0), math.pi, F.where(F.isnan(x), x, 0.0))


def is_complex(input) -> bool:
    return False


def is_conj(input) -> bool:
    return False


def is_neg(input) -> bool:
    return False


def isreal(input):
    return F.ones_like(input, dtype=dt.bool_)


def is_signed(input) -> bool:
    return input.dtype not in (dt.bool_, dt.uint8)


def is_nonzero(input) -> bool:
    if input.numel() != 1:
        what = "no values" if input.numel() == 0 else "more than one value"
        raise op_error("is_nonzero", f"Boolean value of Tensor with {what} is ambiguous")
    return bool(input.reshape(()).item() != 0)


def is_same_size(input, other) -> bool:
    return tuple(input.shape) == tuple(other.shape)


def is_inference(input) -> bool:
    return False


def is_inference_mode_enabled() -> bool:
    from kiln.tracer.tensor import STATE
    return bool(STATE.inference)


# ----------------------------------------------------------------------------- sorting

SortResult = namedtuple("sort", ["values", "indices"])


def argsort(input, dim=-1, descending=False, *, stable=False):
    if input.ndim == 0:
        return F.zeros((), dtype=dt.int64, device=input.device)
    # always stable: torch's stable=True order, and a valid order for stable=False
    return P.argsort(input, axis=_norm_dim(dim, input.ndim), descending=bool(descending))


def sort(input, dim=-1, descending=False, *, stable=False):
    if isinstance(dim, bool):          # sort(x, descending) is not torch's order; keep dims
        raise TypeError("sort(): dim must be an int")
    idx = argsort(input, dim, descending)
    if input.ndim == 0:
        return SortResult(input.clone(), idx)
    return SortResult(F.gather(input, _norm_dim(dim, input.ndim), idx), idx)


def msort(input):
    return sort(input, 0).values


def topk(input, k, dim=-1, largest=True, sorted=True):
    d = _norm_dim(dim, input.ndim) if input.ndim else 0
    if input.ndim and not 0 <= k <= input.shape[d]:
        raise op_error("topk", f"selected index k out of range (k={k}, size along dim "
                       f"{d} is {input.shape[d]})", IndexError)
    values, indices = sort(input, d, descending=largest)
    if input.ndim == 0:
        return values_indices(values, indices)
    return values_indices(F.narrow(values, d, 0, k), F.narrow(indices, d, 0, k))


def kthvalue(input, k, dim=-1, keepdim=False):
    d = _norm_dim(dim, input.ndim) if input.ndim else 0
    values, indices = sort(input, d)
    if input.ndim == 0:
        return values_indices(values, indices)
    v, i = F.narrow(values, d, k - 1, 1), F.narrow(indices, d, k - 1, 1)
    if not keepdim:
        v, i = F.squeeze(v, d), F.squeeze(i, d)
    return values_indices(v, i)


def median(input, dim=None, keepdim=False):
    """The lower median (PyTorch's), with its index along `dim` when dim is given."""
    if dim is None:
        flat = F.reshape(input, (-1,))
        n = flat.shape[0]
        return kthvalue(flat, (n - 1) // 2 + 1, 0).values if n else \
            F.full((), math.nan, dtype=input.dtype)
    d = _norm_dim(dim, input.ndim) if input.ndim else 0
    n = input.shape[d] if input.ndim else 1
    return kthvalue(input, (n - 1) // 2 + 1, d, keepdim)


def nanmedian(input, dim=None, keepdim=False):
    """Median over the non-NaN values (NaN sorts last, so the k-th of the valid ones)."""
    if dim is None:
        return nanmedian(F.reshape(input, (-1,)), 0).values
    d = _norm_dim(dim, input.ndim) if input.ndim else 0
    if input.ndim == 0:
        return values_indices(input.clone(), F.zeros((), dtype=dt.int64))
    values, indices = sort(input, d)
    valid = F.sum(F.logical_not(F.isnan(input)), d, keepdim=True)
    k = F.clamp(F.floor_divide(valid - 1, 2), min=0)
    v, i = F.gather(values, d, k), F.gather(indices, d, k)
    if not keepdim:
        v, i = F.squeeze(v, d), F.squeeze(i, d)
    return values_indices(v, i)


def mode(input, dim=-1, keepdim=False):
    """Most frequent value along `dim` (the smallest among equally frequent ones) and the
    index of its last occurrence, as PyTorch's CPU kernel returns."""
    d = _norm_dim(dim, input.ndim) if input.ndim else 0
    if input.ndim == 0:
        return values_indices(input.clone(), F.zeros((), dtype=dt.int64))
    x = F.movedim(input, d, -1)
    eq = F.eq(F.unsqueeze(x, -1), F.unsqueeze(x, -2))          # (..., n, n)
    counts = F.sum(eq, -1)                                      # occurrences of each element
    best = F.amax(counts, -1, keepdim=True)
    # among elements with the top count, the smallest value; its last position
    n = x.shape[-1]
    big = F.where(F.eq(counts, best), x, F.amax(x, -1, keepdim=True))
    value = F.amin(big, -1, keepdim=True)
    pos = F.arange(n, device=x.device)
    last = F.amax(F.where(F.eq(x, value), pos, -1), -1, keepdim=True)
    v = F.gather(x, x.ndim - 1, last)
    v, last = F.movedim(v, -1, d), F.movedim(last, -1, d)
    if not keepdim:
        v, last = F.squeeze(v, d), F.squeeze(last, d)
    return values_indices(v, last)


def quantile(input, q, dim=None, keepdim=False, *, interpolation="linear"):
    x = _f(input)
    if dim is None:
        x, d = F.reshape(x, (-1,)), 0
    else:
        d = _norm_dim(dim, x.ndim)
    scalar_q = not isinstance(q, Tensor)
    qs = np.atleast_1d(np.asarray(q.tolist() if isinstance(q, Tensor) else q, dtype=np.float64))
    if np.any((qs < 0) | (qs > 1)):
        raise op_error("quantile", "q values must be in the range [0, 1]", ValueError)
    s = sort(x, d).values
    n = x.shape[d]
    outs = []
    for qv in qs:
        pos = qv * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        if interpolation == "lower":
            hi = lo
        elif interpolation == "higher":
            lo = hi
        elif interpolation == "nearest":
            lo = hi = int(np.round(pos))      # round half to even, as torch
        a, b = F.select(s, d, lo), F.select(s, d, hi)
        frac = pos - lo if interpolation == "linear" else (0.5 if interpolation == "midpoint"
                                                            else 0.0)
        if interpolation == "midpoint":
            frac = 0.5 if hi != lo else 0.0
        outs.append(a + (b - a) * frac if frac else a)
    out = F.stack(outs, 0)
    if keepdim:
        if dim is None:
            out = F.reshape(out, (len(qs),) + (1,) * input.ndim)
        else:
            out = F.unsqueeze(out, d + 1)
    if scalar_q:
        out = F.squeeze(out, 0)
    return out


def nanquantile(input, q, dim=None, keepdim=False, *, interpolation="linear"):
    x = _f(input)
    if not bool(F.any(F.isnan(x))):
        return quantile(x, q, dim, keepdim, interpolation=interpolation)
    if dim is None:
        data = x.detach().numpy().reshape(-1)
        return _as_tensor(np.nanquantile(data, q, method=interpolation).astype(x.dtype.np),
                          x)
    d = _norm_dim(dim, x.ndim)
    data = x.detach().numpy()
    out = np.nanquantile(data, np.asarray(q.tolist() if isinstance(q, Tensor) else q), axis=d,
                         keepdims=keepdim, method=interpolation).astype(x.dtype.np)
    return _as_tensor(out, x)


# ----------------------------------------------------------------------------- cumulative

def _cum_extreme(input, dim, largest):
    x = input
    d = _norm_dim(dim, x.ndim) if x.ndim else 0
    if x.ndim == 0:
        return values_indices(x.clone(), F.zeros((), dtype=dt.int64))
    data = x._read("cummax()" if largest else "cummin()")
    xp = x.device.xp
    moved = xp.moveaxis(data, d, -1)
    n = moved.shape[-1]
    best = moved.copy()
    idx = xp.zeros(moved.shape, dtype=np.int64)
    for i in range(1, n):
        prev, cur = best[..., i - 1], moved[..., i]
        take = (cur >= prev) if largest else (cur <= prev)
        take = take | xp.isnan(cur) if moved.dtype.kind == "f" else take
        take = take & ~(xp.isnan(prev)) if moved.dtype.kind == "f" else take
        best[..., i] = xp.where(take, cur, prev)
        idx[..., i] = xp.where(take, i, idx[..., i - 1])
    indices = Tensor._make(xp.ascontiguousarray(xp.moveaxis(idx, -1, d)), dt.int64, x.device)
    return values_indices(F.gather(x, d, indices), indices)


def cummax(input, dim):
    return _cum_extreme(input, dim, True)


def cummin(input, dim):
    return _cum_extreme(input, dim, False)


@composite
def logcumsumexp(input, dim):
    x = _f(input)
    d = _norm_dim(dim, x.ndim) if x.ndim else 0
    if x.ndim == 0 or x.numel() == 0:
        return x.clone()
    m = F.amax(x, d, keepdim=True).detach()
    m = F.where(F.isinf(m), 0.0, m)
    return F.log(F.cumsum(F.exp(x - m), d)) + m


def diff(input, n=1, dim=-1, prepend=None, append=None):
    x = input
    d = _norm_dim(dim, x.ndim)
    if prepend is not None or append is not None:
        parts = ([prepend] if prepend is not None else []) + [x] + \
            ([append] if append is not None else [])
        x = F.cat([p if p.ndim == x.ndim else F.expand(p, tuple(x.shape[:d]) + (1,) +
                                                        tuple(x.shape[d + 1:])) for p in parts], d)
    for _ in range(n):
        length = x.shape[d]
        if length == 0:
            break                 # differences of nothing are nothing, as in torch
        hi, lo = F.narrow(x, d, 1, length - 1), F.narrow(x, d, 0, length - 1)
        x = F.logical_xor(hi, lo) if x.dtype is dt.bool_ else hi - lo
    return x


def gradient(input, *, spacing=1, dim=None, edge_order=1):
    """Central differences inside, one-sided at the edges (numpy.gradient's rule)."""
    dims = list(range(input.ndim)) if dim is None else (
        [dim] if isinstance(dim, int) else list(dim))
    spacings = spacing if isinstance(spacing, (list, tuple)) else [spacing] * len(dims)
    out = []
    x = _f(input)
    for d, h in zip(dims, spacings):
        d = _norm_dim(d, x.ndim)
        n = x.shape[d]
        h = float(h)
        inner = (F.narrow(x, d, 2, n - 2) - F.narrow(x, d, 0, n - 2)) / (2 * h)
        first = (F.narrow(x, d, 1, 1) - F.narrow(x, d, 0, 1)) / h
        last = (F.narrow(x, d, n - 1, 1) - F.narrow(x, d, n - 2, 1)) / h
        out.append(F.cat([first, inner, last], d))
    return tuple(out)


def trapezoid(y, x=None, *, dx=None, dim=-1):
    d = _norm_dim(dim, y.ndim)
    n = y.shape[d]
    avg = (F.narrow(y, d, 1, n - 1) + F.narrow(y, d, 0, n - 1)) * 0.5
    if x is not None:
        return F.sum(avg * diff(x, dim=dim if x.ndim == y.ndim else -1), d)
    return F.sum(avg, d) * (1.0 if dx is None else dx)


trapz = trapezoid


def cumulative_trapezoid(y, x=None, *, dx=None, dim=-1):
    d = _norm_dim(dim, y.ndim)
    n = y.shape[d]
    avg = (F.narrow(y, d, 1, n - 1) + F.narrow(y, d, 0, n - 1)) * 0.5
    if x is not None:
        avg = avg * diff(x, dim=dim if x.ndim == y.ndim else -1)
    elif dx is not None:
        avg = avg * dx
    return F.cumsum(avg, d)


# ----------------------------------------------------------------------------- counting

def searchsorted(sorted_sequence, input, *, out_int32=False, right=False, side=None,
                 sorter=None):
    if side is not None:
        right = side == "right"
    seq = sorted_sequence
    if sorter is not None:
        seq = F.gather(seq, seq.ndim - 1, sorter)
    scalar = not isinstance(input, Tensor)
    values = _as_tensor(input, seq) if scalar else input
    if seq.ndim == 1:
        cmp = F.le if right else F.lt
        counts = F.sum(cmp(seq, F.unsqueeze(values, -1)), -1)
    else:
        cmp = F.le if right else F.lt
        counts = F.sum(cmp(F.unsqueeze(seq, -2), F.unsqueeze(values, -1)), -1)
    return counts.to(dt.int32 if out_int32 else dt.int64)


def bucketize(input, boundaries, *, out_int32=False, right=False):
    return searchsorted(boundaries, input, out_int32=out_int32, right=right)


def histc(input, bins=100, min=0, max=0):
    x = _f(input).detach()
    lo, hi = float(min), float(max)
    if lo == hi:
        lo, hi = float(F.amin(x)), float(F.amax(x))
        if lo == hi:
            lo, hi = lo - 1, hi + 1
    inside = F.logical_and(F.ge(x, lo), F.le(x, hi))
    idx = F.floor((x - lo) * (bins / (hi - lo))).to(dt.int64)
    idx = F.clamp(idx, 0, bins - 1)
    hits = F.logical_and(F.eq(F.unsqueeze(F.reshape(idx, (-1,)), -1),
                              F.arange(bins, device=x.device)),
                         F.unsqueeze(F.reshape(inside, (-1,)), -1))
    return F.sum(hits, 0).to(x.dtype)


def histogram(input, bins=100, *, range=None, weight=None, density=False):
    data = input._read("histogram()")
    w = None if weight is None else weight._read("histogram()")
    edges_arg = bins._read("histogram()") if isinstance(bins, Tensor) else bins
    hist, edges = np.histogram(np.asarray(data), bins=edges_arg, range=range,
                               weights=None if w is None else np.asarray(w), density=density)
    H = namedtuple("histogram", ["hist", "bin_edges"])
    return H(_as_tensor(hist.astype(input.dtype.np), input),
             _as_tensor(edges.astype(input.dtype.np), input))


def bincount(input, weights=None, minlength=0):
    data = np.asarray(input._read("bincount()"))
    if data.ndim != 1 or (data.size and data.min() < 0):
        raise op_error("bincount", "bincount only supports 1-d non-negative integral inputs.")
    w = None if weights is None else np.asarray(weights._read("bincount()"))
    out = np.bincount(data, weights=w, minlength=minlength)
    kind = dt.int64 if weights is None else (weights.dtype if weights.dtype.is_floating_point
                                             else dt.float64)
    return _as_tensor(out.astype(kind.np), input)


def unique(input, sorted=True, return_inverse=False, return_counts=False, dim=None):
    data = np.asarray(input._read("unique()"))
    if dim is None:
        values, inverse, counts = np.unique(data.reshape(-1), return_inverse=True,
                                            return_counts=True)
        inverse = inverse.reshape(data.shape)
    else:
        d = _norm_dim(dim, input.ndim)
        values, inverse, counts = np.unique(data, return_inverse=True, return_counts=True,
                                            axis=d)
        inverse = inverse.reshape(-1)
    out = [_as_tensor(values.astype(input.dtype.np), input)]
    if return_inverse:
        out.append(_as_tensor(inverse.astype(np.int64), input))
    if return_counts:
        out.append(_as_tensor(counts.astype(np.int64), input))
    return out[0] if len(out) == 1 else tuple(out)


def unique_consecutive(input, return_inverse=False, return_counts=False, dim=None):
    data = np.asarray(input._read("unique_consecutive()"))
    if dim is None:
        flat = data.reshape(-1)
        starts = np.ones(flat.shape[0], dtype=bool)
        starts[1:] = flat[1:] != flat[:-1]
        values = flat[starts]
        inverse = (np.cumsum(starts) - 1).reshape(data.shape)
    else:
        d = _norm_dim(dim, input.ndim)
        moved = np.moveaxis(data, d, 0)
        starts = np.ones(moved.shape[0], dtype=bool)
        starts[1:] = np.any((moved[1:] != moved[:-1]).reshape(moved.shape[0] - 1, -1), axis=1)
        values = np.moveaxis(moved[starts], 0, d)
        inverse = np.cumsum(starts) - 1
    counts = np.diff(np.append(np.flatnonzero(starts), starts.shape[0]))
    out = [_as_tensor(np.ascontiguousarray(values).astype(input.dtype.np), input)]
    if return_inverse:
        out.append(_as_tensor(inverse.astype(np.int64), input))
    if return_counts:
        out.append(_as_tensor(counts.astype(np.int64), input))
    return out[0] if len(out) == 1 else tuple(out)


def isin(elements, test_elements, *, assume_unique=False, invert=False):
    e = elements if isinstance(elements, Tensor) else _as_tensor(elements)
    t = test_elements if isinstance(test_elements, Tensor) else _as_tensor(test_elements, e)
    hit = F.any(F.eq(F.unsqueeze(e, -1), F.reshape(t, (-1,))), -1) if t.numel() else \
        F.zeros(tuple(e.shape), dtype=dt.bool_, device=e.device)
    return F.logical_not(hit) if invert else hit


def aminmax(input, *, dim=None, keepdim=False):
    R = namedtuple("aminmax", ["min", "max"])
    return R(F.amin(input, dim, keepdim), F.amax(input, dim, keepdim))


# ----------------------------------------------------------------------------- shapes

def atleast_1d(*tensors):
    out = [F.reshape(t, (1,)) if t.ndim == 0 else t for t in _flat_args(tensors)]
    return out[0] if len(out) == 1 else tuple(out)


def atleast_2d(*tensors):
    out = [F.reshape(t, (1,) * (2 - t.ndim) + tuple(t.shape)) if t.ndim < 2 else t
           for t in _flat_args(tensors)]
    return out[0] if len(out) == 1 else tuple(out)


def atleast_3d(*tensors):
    out = []
    for t in _flat_args(tensors):
        if t.ndim == 0:
            t = F.reshape(t, (1, 1, 1))
        elif t.ndim == 1:
            t = F.reshape(t, (1, t.shape[0], 1))
        elif t.ndim == 2:
            t = F.unsqueeze(t, -1)
        out.append(t)
    return out[0] if len(out) == 1 else tuple(out)


def _flat_args(tensors):
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        return list(tensors[0])
    return list(tensors)


def column_stack(tensors):
    return F.hstack([F.reshape(t, (-1, 1)) if t.ndim <= 1 else t for t in tensors])


def row_stack(tensors):
    return F.vstack(tensors)


def dstack(tensors):
    return F.cat(list(atleast_3d(*tensors)) if len(tensors) > 1 else [atleast_3d(tensors[0])],
                 2)


def _split_sections(input, sections, dim, name):
    if isinstance(sections, int):
        if input.shape[dim] % sections:
            raise op_error(name, f"torch.{name} attempted to split along dimension {dim}, but "
                           f"the size of the dimension {input.shape[dim]} is not divisible by "
                           f"the split_size {sections}!")
    return F.tensor_split(input, sections, dim)


def hsplit(input, sections):
    return _split_sections(input, sections, 1 if input.ndim > 1 else 0, "hsplit")


def vsplit(input, sections):
    return _split_sections(input, sections, 0, "vsplit")


def dsplit(input, sections):
    return _split_sections(input, sections, 2, "dsplit")


def split_with_sizes(input, split_sizes, dim=0):
    return F.split(input, list(split_sizes), dim)


unsafe_split, unsafe_chunk = F.split, F.chunk


def unsafe_split_with_sizes(input, split_sizes, dim=0):
    return split_with_sizes(input, split_sizes, dim)


def ravel(input):
    return F.reshape(input, (-1,))


def rot90(input, k=1, dims=(0, 1)):
    d0, d1 = (_norm_dim(d, input.ndim) for d in dims)
    k = k % 4
    if k == 0:
        return input.clone()
    if k == 1:
        return F.transpose(F.flip(input, (d1,)), d0, d1)
    if k == 2:
        return F.flip(input, (d0, d1))
    return F.flip(F.transpose(input, d0, d1), (d1,))


def diag_embed(input, offset=0, dim1=-2, dim2=-1):
    """out[..., i, i + offset] = input[..., i], the other entries zero."""
    m = input.shape[-1]
    n = m + _py_abs(offset)
    rows = F.unsqueeze(F.arange(n, device=input.device), 1)
    cols = F.unsqueeze(F.arange(n, device=input.device), 0)
    padded = F.pad(input, (0, n - m)) if n > m else input
    # the value of row i (offset >= 0) or of column j (offset < 0)
    values = F.unsqueeze(padded, -1) if offset >= 0 else F.unsqueeze(padded, -2)
    mat = F.where(F.eq(rows + offset, cols), values, 0)
    out_ndim = input.ndim + 1
    d1, d2 = _norm_dim(dim1, out_ndim), _norm_dim(dim2, out_ndim)
    if (d1, d2) == (out_ndim - 2, out_ndim - 1):
        return mat
    return F.movedim(mat, (-2, -1), (d1, d2))


def diagflat(input, offset=0):
    return diag_embed(F.reshape(input, (-1,)), offset)


def diagonal_scatter(input, src, offset=0, dim1=0, dim2=1):
    d1, d2 = _norm_dim(dim1, input.ndim), _norm_dim(dim2, input.ndim)
    x = F.movedim(input, (d1, d2), (-2, -1))
    rows, cols = x.shape[-2], x.shape[-1]
    mask = F.eq(F.unsqueeze(F.arange(rows, device=x.device), 1) + offset,
                F.unsqueeze(F.arange(cols, device=x.device), 0))
    n = src.shape[-1]
    if offset >= 0:
        vals = F.unsqueeze(F.pad(src, (0, rows - n)) if rows > n else F.narrow(src, -1, 0, rows),
                           -1)
    else:
        vals = F.unsqueeze(F.pad(src, (0, cols - n)) if cols > n else F.narrow(src, -1, 0, cols),
                           -2)
    out = F.where(mask, vals, x)
    return F.movedim(out, (-2, -1), (d1, d2))


def select_scatter(input, src, dim, index):
    d = _norm_dim(dim, input.ndim)
    n = input.shape[d]
    index = index % n
    mask = F.reshape(F.eq(F.arange(n, device=input.device), index),
                     (n,) + (1,) * (input.ndim - d - 1))
    return F.where(mask, F.unsqueeze(src, d), input)


def slice_scatter(input, src, dim=0, start=None, end=None, step=1):
    d = _norm_dim(dim, input.ndim)
    n = input.shape[d]
    positions = list(range(n))[slice(start, end, step)]
    out = input
    idx = _as_tensor(np.asarray(positions, dtype=np.int64), input)
    return F.index_copy(out, d, idx, src) if positions else input.clone()


def block_diag(*tensors):
    mats = [F.reshape(t, (1, -1)) if t.ndim == 1 else (F.reshape(t, (1, 1)) if t.ndim == 0
                                                       else t) for t in tensors]
    cols = _py_sum(m.shape[1] for m in mats)
    kind = mats[0].dtype
    for m in mats[1:]:
        kind = dt.promote(kind, m.dtype)
    rows, left = [], 0
    for m in mats:
        right = cols - left - m.shape[1]
        rows.append(F.pad(m.to(kind), (left, right)))
        left += m.shape[1]
    return F.cat(rows, 0)


def cartesian_prod(*tensors):
    if len(tensors) == 1:
        return tensors[0]
    grids = meshgrid(*tensors, indexing="ij")
    return F.stack([F.reshape(g, (-1,)) for g in grids], 1)


def combinations(input, r=2, with_replacement=False):
    n = input.shape[0]
    pick = itertools.combinations_with_replacement if with_replacement else \
        itertools.combinations
    combos = list(pick(range(n), r))
    if not combos:
        return F.zeros((0,) if r == 0 else (0, r), dtype=input.dtype, device=input.device)
    idx = _as_tensor(np.asarray(combos, dtype=np.int64), input)
    return F.reshape(F.index_select(input, 0, F.reshape(idx, (-1,))), (len(combos), r))


def meshgrid(*tensors, indexing=None):
    ts = _flat_args(tensors)
    indexing = indexing or "ij"
    shape = tuple(t.numel() for t in ts)
    if indexing == "xy" and len(ts) >= 2:
        shape = (shape[1], shape[0]) + shape[2:]
    out = []
    for i, t in enumerate(ts):
        pos = i
        if indexing == "xy" and len(ts) >= 2 and i < 2:
            pos = 1 - i
        view = [1] * len(ts)
        view[pos] = t.numel()
        out.append(F.expand(F.reshape(t, tuple(view)), shape))
    return tuple(out)


def tril_indices(row, col, offset=0, *, dtype=None, device=None):
    r, c = np.tril_indices(row, offset, col)
    from kiln.tracer.creation import tensor
    return tensor(np.stack([r, c]).astype(np.int64), dtype=dtype or dt.int64, device=device)


def triu_indices(row, col, offset=0, *, dtype=None, device=None):
    r, c = np.triu_indices(row, offset, col)
    from kiln.tracer.creation import tensor
    return tensor(np.stack([r, c]).astype(np.int64), dtype=dtype or dt.int64, device=device)


def unravel_index(indices, shape):
    shape = tuple(shape) if not isinstance(shape, int) else (shape,)
    idx = indices if isinstance(indices, Tensor) else _as_tensor(indices)
    out, rest = [], idx
    for size in reversed(shape):
        out.append(F.remainder(rest, size))
        rest = F.floor_divide(rest, size)
    return tuple(reversed(out))


def vander(x, N=None, increasing=False):
    n = x.shape[0] if N is None else N
    powers = F.arange(n, device=x.device)
    if not increasing:
        powers = F.flip(powers, (0,))
    base = x if x.dtype.is_floating_point else x.to(dt.int64)
    return F.pow(F.unsqueeze(base, -1), powers.to(base.dtype))


def index_put(input, indices, values, accumulate=False):
    return F.index_put(input, indices, values, accumulate)


def index_reduce(input, dim, index, source, reduce, *, include_self=True):
    return scatter_reduce(input, dim, _expand_index(index, source, dim), source, reduce,
                          include_self=include_self)


def _expand_index(index, source, dim):
    d = _norm_dim(dim, source.ndim)
    shape = [1] * source.ndim
    shape[d] = index.shape[0]
    return F.expand(F.reshape(index, tuple(shape)), tuple(source.shape))


def scatter_reduce(input, dim, index, src, reduce, *, include_self=True):
    """`reduce` (sum, prod, mean, amax, amin) of src's values into input's positions along
    `dim` named by `index`; index must match input in the other dims."""
    d = _norm_dim(dim, input.ndim)
    for i in range(input.ndim):
        if i != d and index.shape[i] != input.shape[i]:
            raise op_error("scatter_reduce", f"kiln needs index to match input outside dim {d}: "
                           f"index {list(index.shape)}, input {list(input.shape)}")
    src = src[tuple(slice(0, k) for k in index.shape)]
    n = input.shape[d]
    hit = F.movedim(F.eq(F.unsqueeze(index, -1), F.arange(n, device=input.device)), d, -2)
    vals = F.unsqueeze(F.movedim(src, d, -1), -1)             # ..., k, 1
    base = F.movedim(input, d, -1)                            # ..., n
    count = F.sum(hit, -2)
    if reduce in ("sum", "mean"):
        total = F.sum(F.where(hit, vals, 0), -2)
        if include_self:
            total, count = total + base, count + 1
        if reduce == "mean":
            safe = F.clamp(count, min=1)
            total = total / safe.to(total.dtype) if total.dtype.is_floating_point else \
                F.floor_divide(total, safe)
        out = F.where(F.gt(count, 0), total, base)
    elif reduce == "prod":
        total = F.prod(F.where(hit, vals, 1), -2)
        out = total * base if include_self else F.where(F.gt(count, 0), total, base)
    elif reduce in ("amax", "amin"):
        if vals.dtype.is_floating_point:
            fill = -math.inf if reduce == "amax" else math.inf
        else:
            info = np.iinfo(vals.dtype.np)
            fill = int(info.min if reduce == "amax" else info.max)
        best = (F.amax if reduce == "amax" else F.amin)(F.where(hit, vals, fill), -2)
        if include_self:
            best = (F.maximum if reduce == "amax" else F.minimum)(best, base)
        out = F.where(F.gt(count, 0), best, base)
    else:
        raise op_error("scatter_reduce", f"reduce argument must be either sum, prod, mean, amax "
                       f"or amin, got {reduce}", ValueError)
    return F.movedim(out.to(input.dtype), -1, d)


def masked_scatter(input, mask, source):
    m = F.expand(mask, tuple(input.shape)) if tuple(mask.shape) != tuple(input.shape) else mask
    flat_mask = F.reshape(m, (-1,))
    positions = F.cumsum(flat_mask.to(dt.int64), 0) - 1
    count = int(F.sum(flat_mask))
    src = F.narrow(F.reshape(source, (-1,)), 0, 0, count) if count else F.reshape(source, (-1,))
    picked = F.take(src, F.clamp(positions, min=0)) if count else F.reshape(input, (-1,))
    return F.reshape(F.where(flat_mask, picked, F.reshape(input, (-1,))), tuple(input.shape))


def put(input, index, source, accumulate=False):
    flat = F.reshape(input, (-1,))
    out = F.index_put(flat, (F.reshape(index, (-1,)),), F.reshape(source, (-1,)), accumulate)
    return F.reshape(out, tuple(input.shape))


def renorm(input, p, dim, maxnorm):
    d = _norm_dim(dim, input.ndim)
    others = tuple(i for i in range(input.ndim) if i != d)
    norms = F.norm(input, p, others, keepdim=True)
    scale = F.where(F.gt(norms, maxnorm), maxnorm / (norms + 1e-7), 1.0)
    return input * scale


def unfold(input, dimension, size, step):
    """Tensor.unfold: every `size`-long window along `dimension`, `step` apart, as a new last
    dim."""
    d = _norm_dim(dimension, input.ndim) if input.ndim else 0
    n = input.shape[d] if input.ndim else 1
    count = (n - size) // step + 1
    starts = np.arange(count) * step
    idx = (starts[:, None] + np.arange(size)[None, :]).reshape(-1)
    taken = F.index_select(input, d, _as_tensor(idx.astype(np.int64), input))
    shape = tuple(input.shape[:d]) + (count, size) + tuple(input.shape[d + 1:])
    return F.movedim(F.reshape(taken, shape), d + 1, -1)


# ----------------------------------------------------------------------------- linear algebra

def addmv(input, mat, vec, *, beta=1, alpha=1):
    return _scaled(input, beta) + F.mv(mat, vec) * alpha


def addr(input, vec1, vec2, *, beta=1, alpha=1):
    return _scaled(input, beta) + F.outer(vec1, vec2) * alpha


def addbmm(input, batch1, batch2, *, beta=1, alpha=1):
    return _scaled(input, beta) + F.sum(F.bmm(batch1, batch2), 0) * alpha


def _scaled(input, beta):
    if beta == 0:
        return F.zeros_like(input)
    return input * beta if beta != 1 else input


def adjoint(input):
    return F.transpose(input, -2, -1)


def chain_matmul(*matrices):
    out = matrices[0]
    for m in matrices[1:]:
        out = F.matmul(out, m)
    return out


def vdot(input, other):
    return F.dot(input, other)


def kron(input, other):
    a, b = input, other
    nd = _py_max(a.ndim, b.ndim)
    a = F.reshape(a, (1,) * (nd - a.ndim) + tuple(a.shape))
    b = F.reshape(b, (1,) * (nd - b.ndim) + tuple(b.shape))
    ai = F.reshape(a, tuple(s for d in a.shape for s in (d, 1)))
    bi = F.reshape(b, tuple(s for d in b.shape for s in (1, d)))
    return F.reshape(ai * bi, tuple(x * y for x, y in zip(a.shape, b.shape)))


def cdist(x1, x2, p=2.0, compute_mode=None):
    diff_ = F.unsqueeze(x1, -2) - F.unsqueeze(x2, -3)
    if p == 2:
        sq = F.sum(diff_ * diff_, -1)
        return F.sqrt(sq)
    if p == 0:
        return F.sum(F.ne(diff_, 0), -1).to(x1.dtype)
    if math.isinf(p):
        return F.amax(F.abs(diff_), -1)
    if p == 1:
        return F.sum(F.abs(diff_), -1)
    return F.pow(F.sum(F.pow(F.abs(diff_), p), -1), 1.0 / p)


def cov(input, *, correction=1, fweights=None, aweights=None):
    x = _f(input)
    if x.ndim == 1:
        x = F.unsqueeze(x, 0)
    n = x.shape[1]
    w = None
    if fweights is not None:
        w = fweights.to(x.dtype)
    if aweights is not None:
        w = aweights.to(x.dtype) if w is None else w * aweights.to(x.dtype)
    if w is None:
        mean = F.mean(x, 1, keepdim=True)
        xc = x - mean
        c = F.matmul(xc, F.transpose(xc, 0, 1)) / (n - correction)
    else:
        wsum = F.sum(w)
        mean = F.sum(x * w, 1, keepdim=True) / wsum
        xc = x - mean
        if aweights is None:
            norm = wsum - correction
        else:
            norm = wsum - correction * F.sum(w * aweights.to(x.dtype)) / wsum
        c = F.matmul(xc * w, F.transpose(xc, 0, 1)) / norm
    return F.squeeze(c) if input.ndim == 1 else c


def corrcoef(input):
    c = cov(input)
    if c.ndim == 0:
        return c / c
    d = F.sqrt(F.diagonal(c))
    return F.clamp(c / F.unsqueeze(d, 1) / F.unsqueeze(d, 0), -1, 1)


# ----------------------------------------------------------------------------- creation

def scalar_tensor(s, *, dtype=None, device=None, requires_grad=False):
    from kiln.tracer.creation import tensor
    return tensor(s, dtype=dtype or dt.get_default_dtype(), device=device,
                  requires_grad=requires_grad)


def range_(start=0, end=None, step=1, *, dtype=None, device=None, requires_grad=False):
    """torch.range (deprecated): like arange but includes `end`."""
    from kiln.tracer.creation import arange
    if end is None:
        start, end = 0, start
    count = int(math.floor((end - start) / step)) + 1
    return arange(0, count, dtype=dt.float64, device=device).mul(step).add(start).to(
        dtype or dt.get_default_dtype()).requires_grad_(requires_grad)


def frombuffer(buffer, *, dtype, count=-1, offset=0, requires_grad=False):
    from kiln.tracer.creation import _dtype, from_numpy
    kind = _dtype(dtype)
    arr = np.frombuffer(buffer, dtype=kind.np, count=count, offset=offset)
    out = from_numpy(arr)
    return out.requires_grad_(True) if requires_grad else out


def _window(name, n, periodic, fn, dtype, device, requires_grad):
    from kiln.tracer.creation import arange, ones
    kind = dtype or dt.get_default_dtype()
    if n == 0:
        return ones(0, dtype=kind, device=device)
    if n == 1:
        return ones(1, dtype=kind, device=device)
    m = n if periodic else n - 1
    i = arange(n, dtype=dt.float64, device=device)
    out = fn(i, m).to(kind)
    return out.requires_grad_(True) if requires_grad else out


def hann_window(window_length, periodic=True, *, dtype=None, device=None, requires_grad=False):
    return _window("hann", window_length, periodic,
                   lambda i, m: 0.5 - 0.5 * F.cos(i * (2 * math.pi / m)), dtype, device,
                   requires_grad)


def hamming_window(window_length, periodic=True, alpha=0.54, beta=0.46, *, dtype=None,
                   device=None, requires_grad=False):
    return _window("hamming", window_length, periodic,
                   lambda i, m: alpha - beta * F.cos(i * (2 * math.pi / m)), dtype, device,
                   requires_grad)


def blackman_window(window_length, periodic=True, *, dtype=None, device=None,
                    requires_grad=False):
    return _window("blackman", window_length, periodic,
                   lambda i, m: 0.42 - 0.5 * F.cos(i * (2 * math.pi / m))
                   + 0.08 * F.cos(i * (4 * math.pi / m)), dtype, device, requires_grad)


def bartlett_window(window_length, periodic=True, *, dtype=None, device=None,
                    requires_grad=False):
    return _window("bartlett", window_length, periodic,
                   lambda i, m: 1 - F.abs(i * (2.0 / m) - 1), dtype, device, requires_grad)


def kaiser_window(window_length, periodic=True, beta=12.0, *, dtype=None, device=None,
                  requires_grad=False):
    return _window("kaiser", window_length, periodic,
                   lambda i, m: P.i0(F.sqrt(F.clamp(1 - (i * (2.0 / m) - 1) ** 2, min=0))
                                     * beta) / float(np.i0(beta)), dtype, device, requires_grad)


def poisson(input, generator=None):
    from kiln.tracer.creation import default_generator
    gen = generator or default_generator
    rng = np.random.default_rng(gen.next_seed())
    rates = np.asarray(input.detach()._read("poisson()"))
    return _as_tensor(rng.poisson(rates).astype(input.dtype.np), input)


def binomial(count, prob, generator=None):
    from kiln.tracer.creation import default_generator
    gen = generator or default_generator
    rng = np.random.default_rng(gen.next_seed())
    n = np.asarray(count.detach()._read("binomial()"))
    p = np.asarray(prob.detach()._read("binomial()"))
    return _as_tensor(rng.binomial(n.astype(np.int64), p).astype(count.dtype.np), count)


def fill(input, value):
    return _full_like(input, value.item() if isinstance(value, Tensor) else value)


# ----------------------------------------------------------------------------- types and misc

class finfo:
    """Machine limits of a floating dtype (torch.finfo)."""

    def __init__(self, type=None):
        kind = type or dt.get_default_dtype()
        info = np.finfo(kind.np)
        self.dtype = kind.name
        self.bits, self.eps, self.max, self.min = info.bits, float(info.eps), float(info.max), \
            float(info.min)
        self.tiny = self.smallest_normal = float(info.tiny)
        self.resolution = float(info.resolution)

    def __repr__(self) -> str:
        return f"finfo(resolution={self.resolution}, min={self.min}, max={self.max}, " \
               f"eps={self.eps}, smallest_normal={self.tiny}, tiny={self.tiny}, " \
               f"dtype={self.dtype})"


class iinfo:
    """Limits of an integer dtype (torch.iinfo)."""

    def __init__(self, type):
        info = np.iinfo(type.np)
        self.dtype, self.bits, self.max, self.min = type.name, info.bits, int(info.max), \
            int(info.min)


def can_cast(from_, to) -> bool:
    order = [dt.bool_, dt.uint8, dt.int32, dt.int64, dt.float16, dt.float32, dt.float64]
    cat = {d: (0 if d is dt.bool_ else 1 if not d.is_floating_point else 2) for d in order}
    return cat[from_] <= cat[to]


def broadcast_shapes(*shapes):
    from kiln.tracer.tensor import Size
    return Size(np.broadcast_shapes(*[tuple(s) if not isinstance(s, int) else (s,)
                                      for s in shapes]))


def typename(obj) -> str:
    if isinstance(obj, Tensor):
        return obj.type()
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def get_device(input) -> int:
    return -1 if input.device.type == "cpu" else (input.device.index or 0)


def set_default_tensor_type(t) -> None:
    name = t if isinstance(t, str) else getattr(t, "__name__", "")
    if "Double" in name:
        dt.set_default_dtype(dt.float64)
    elif "Float" in name:
        dt.set_default_dtype(dt.float32)
    else:
        raise TypeError(f"set_default_tensor_type: only floating-point types are supported, "
                        f"got {t}")


def vmap(func, in_dims=0, out_dims=0, randomness="error", *, chunk_size=None):
    """Map `func` over a batch dimension by calling it once per slice and stacking (a loop,
    not torch's batching rules: the same results, at the cost of one call per element)."""
    def mapped(*args):
        dims = in_dims if isinstance(in_dims, (tuple, list)) else (in_dims,) * len(args)
        sizes = {a.shape[d] for a, d in zip(args, dims) if isinstance(a, Tensor) and d is not None}
        if len(sizes) != 1:
            raise ValueError(f"vmap: expected all mapped inputs to have the same size along the "
                             f"mapped dim, got sizes {sorted(sizes)}")
        n = sizes.pop()
        results = []
        for i in range(n):
            call = [F.select(a, d, i) if isinstance(a, Tensor) and d is not None else a
                    for a, d in zip(args, dims)]
            results.append(func(*call))
        first = results[0]
        if isinstance(first, tuple):
            od = out_dims if isinstance(out_dims, (tuple, list)) else (out_dims,) * len(first)
            return tuple(F.stack([r[j] for r in results], od[j]) for j in range(len(first)))
        return F.stack(results, out_dims)
    return mapped


def cond(pred, true_fn, false_fn, operands=()):
    """torch.cond in eager form: the branch `pred` picks, called on `operands` (a compiled
    function reading a tensor predicate reports a graph break)."""
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def while_loop(cond_fn, body_fn, carried_inputs):
    """torch.while_loop in eager form: apply `body_fn` while `cond_fn` holds."""
    values = tuple(carried_inputs)
    while bool(cond_fn(*values)):
        out = body_fn(*values)
        values = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return values


def nonzero_static(input, *, size, fill_value=-1):
    idx = F.nonzero(input)
    n = idx.shape[0]
    if n >= size:
        return F.narrow(idx, 0, 0, size)
    pad = F.full((size - n, idx.shape[1]), fill_value, dtype=dt.int64, device=input.device)
    return F.cat([idx, pad], 0)


def frobenius_norm(input, dim=(-2, -1), keepdim=False):
    return F.sqrt(F.sum(input * input, dim, keepdim))


def histogramdd(input, bins=10, *, range=None, weight=None, density=False):
    data = np.asarray(input._read("histogramdd()"))
    w = None if weight is None else np.asarray(weight._read("histogramdd()"))
    hist, edges = np.histogramdd(data, bins=bins, range=range, weights=w, density=density)
    H = namedtuple("histogramdd", ["hist", "bin_edges"])
    return H(_as_tensor(hist.astype(input.dtype.np), input),
             [_as_tensor(e.astype(input.dtype.np), input) for e in edges])


def _full_like(input, value):
    from kiln.tracer.creation import full_like
    return full_like(input, value)


def from_dlpack(ext_tensor):
    """A tensor sharing memory with any DLPack producer (a NumPy array, a torch or CuPy
    tensor, a capsule from `to_dlpack`)."""
    from kiln.tracer.creation import from_numpy
    if hasattr(ext_tensor, "__dlpack_device__") and ext_tensor.__dlpack_device__()[0] == 2:
        from kiln.runtime.device import Device, cupy_module
        arr = cupy_module().from_dlpack(ext_tensor)
        return Tensor(arr, device=Device("cuda"))
    if not hasattr(ext_tensor, "__dlpack__"):         # a bare capsule
        ext_tensor = _Capsule(ext_tensor)
    return from_numpy(np.from_dlpack(ext_tensor))


class _Capsule:
    """A DLPack capsule with the protocol methods np.from_dlpack asks for (CPU memory)."""

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **kwargs):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


def to_dlpack(tensor):
    """A DLPack capsule of the tensor's memory."""
    return tensor._data.__dlpack__()
