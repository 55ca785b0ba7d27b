"""Sorting and order statistics: sort, argsort, msort, topk, kthvalue, median, nanmedian, mode,
quantile, nanquantile."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer import functional as F
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _as_tensor, _norm_dim
from kiln.tracer.functional.common import refuse_without_kernel
from kiln.tracer.functional.indexing import _gather
from kiln.tracer.functional_extra.common import _f, values_indices
from kiln.tracer.tensor import Tensor
from kiln.tracer.unsigned import check as _check_unsigned


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
    # _gather, not gather: PyTorch sorts uint16/32/64, whose gather it refuses
    return SortResult(_gather(input, _norm_dim(dim, input.ndim), idx, "sort"), idx)


def msort(input):
    return sort(input, 0).values


def topk(input, k, dim=-1, largest=True, sorted=True):
    _check_unsigned("topk", input)
    if input.dtype is dt.bool_:
        raise op_error("topk", "topk does not support bool dtypes on CPU (as PyTorch); take "
                       "x.to(torch.uint8).topk(...) instead")
    d = _norm_dim(dim, input.ndim) if input.ndim else 0
    if input.ndim and not 0 <= k <= input.shape[d]:
        raise op_error("topk", f"selected index k out of range (k={k}, size along dim "
                       f"{d} is {input.shape[d]})", IndexError)
    values, indices = sort(input, d, descending=largest)
    if input.ndim == 0:
        return values_indices(values, indices)
    return values_indices(F.narrow(values, d, 0, k), F.narrow(indices, d, 0, k))


def kthvalue(input, k, dim=-1, keepdim=False):
    refuse_without_kernel("kthvalue", input)
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
    refuse_without_kernel("median", input)
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
    refuse_without_kernel("median", input)
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
    if not input.dtype.is_floating_point:
        raise op_error("quantile", f"quantile() input tensor must be either float or double "
                       f"dtype, got {input.dtype.name}; convert it with .float() first")
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
        data = x.detach().numpy(force=True).reshape(-1)
        return _as_tensor(np.nanquantile(data, q, method=interpolation).astype(x.dtype.np),
                          x)
    d = _norm_dim(dim, x.ndim)
    data = x.detach().numpy(force=True)
    out = np.nanquantile(data, np.asarray(q.tolist() if isinstance(q, Tensor) else q), axis=d,
                         keepdims=keepdim, method=interpolation).astype(x.dtype.np)
    return _as_tensor(out, x)
