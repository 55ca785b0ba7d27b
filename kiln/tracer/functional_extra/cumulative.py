"""Cumulative ops: cummax/cummin, logcumsumexp, diff, gradient, trapezoid, cumulative_trapezoid."""

from __future__ import annotations

import numpy as np

from kiln.ir import dtypes as dt
from kiln.tracer import functional as F
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _norm_dim
from kiln.tracer.functional.common import refuse_without_kernel
from kiln.tracer.functional_extra.common import _f, values_indices
from kiln.tracer.provenance import composite
from kiln.tracer.tensor import Tensor


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
    refuse_without_kernel("logcumsumexp", input, (dt.BOOL, dt.INT))
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
    if y.dtype is dt.bool_:
        raise op_error("trapezoid", "trapezoid: received a bool input for `y`, but bool is not "
                       "supported (as PyTorch); pass y.float()")
    d = _norm_dim(dim, y.ndim)
    n = y.shape[d]
    if x is None and n:
        # PyTorch's spacing-only formula: the sum less half the two ends (an integer y's ends
        # add in its own dtype, wrapping as there)
        ends = F.select(y, d, 0) + F.select(y, d, n - 1)
        return (F.sum(y, d) - ends * 0.5) * (1.0 if dx is None else dx)
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
