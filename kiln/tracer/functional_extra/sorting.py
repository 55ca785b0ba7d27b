"""Sorting and order statistics: sort, argsort, msort, topk, kthvalue, median, nanmedian, mode,
quantile, nanquantile."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer import functional as F
from kiln.tracer.creation import tensor
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _as_tensor, _norm_dim
from kiln.tracer.functional.common import refuse_without_kernel
from kiln.tracer.functional.indexing import _gather
from kiln.tracer.functional_extra.common import _f, values_indices
from kiln.tracer.layout import contiguous_format
from kiln.tracer.strides import settle
from kiln.tracer.tensor import STATE, Tensor
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
    values = _gather(input, _norm_dim(dim, input.ndim), idx, "sort")
    return SortResult(settle(values, "preserve", input), idx)   # laid out as the indices


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
    return values_indices(_row_major(F.narrow(values, d, 0, k)),
                          _row_major(F.narrow(indices, d, 0, k)))


def kthvalue(input, k, dim=-1, keepdim=False):
    refuse_without_kernel("kthvalue", input)
    d = _norm_dim(dim, input.ndim) if input.ndim else 0
    values, indices = sort(input, d)
    if input.ndim == 0:
        return values_indices(values, indices)
    v, i = F.narrow(values, d, k - 1, 1), F.narrow(indices, d, k - 1, 1)
    if not keepdim:
        v, i = F.squeeze(v, d), F.squeeze(i, d)
    return values_indices(_row_major(v), _row_major(i))


def _row_major(t: Tensor) -> Tensor:
    """A row-major copy of `t`, part of a sort's result: PyTorch's topk and kthvalue write
    fresh row-major tensors."""
    return F.clone(t, memory_format=contiguous_format)


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
    v = settle(F.gather(values, d, k), "contiguous")      # PyTorch's, whatever the input's
    i = settle(F.gather(indices, d, k), "contiguous")
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
    # PyTorch's results are row-major whatever the input's layout
    v = settle(F.clone(F.movedim(v, -1, d)), "contiguous")
    last = settle(F.clone(F.movedim(last, -1, d)), "contiguous")
    if not keepdim:
        v, last = F.squeeze(v, d), F.squeeze(last, d)
    return values_indices(v, last)


def quantile(input, q, dim=None, keepdim=False, *, interpolation="linear"):
    return _quantile("quantile", input, q, dim, keepdim, interpolation, skip_nan=False)


def nanquantile(input, q, dim=None, keepdim=False, *, interpolation="linear"):
    return _quantile("nanquantile", input, q, dim, keepdim, interpolation, skip_nan=True)


_INTERPOLATIONS = ("linear", "lower", "higher", "midpoint", "nearest")


def _quantile(op, input, q, dim, keepdim, interpolation, skip_nan):
    """The q-th quantiles along `dim` (of all elements without it), first dim one per q of a
    1-d `q`. Sorted with NaN last: a slice holding NaN gives NaN, or with `skip_nan` its
    non-NaN values count only. The rank q * (count - 1) is a tensor, so a tensor q gets the
    gradient of linear interpolation (the slope between the two values it falls between)."""
    if not input.dtype.is_floating_point:
        raise op_error(op, f"{op}() input tensor must be either float or double dtype, got "
                       f"{input.dtype.name}; convert it with .float() first")
    if interpolation not in _INTERPOLATIONS:
        raise op_error(op, f"{op}() interpolation must be one of {', '.join(_INTERPOLATIONS)}. "
                       f"Got '{interpolation}'", ValueError)
    if not input.numel():
        raise op_error(op, f"{op}() input tensor must be non-empty")
    if isinstance(q, Tensor):
        if q.ndim > 1:
            raise op_error(op, f"{op}() q must be a scalar or 1D tensor, got shape "
                           f"{list(q.shape)}")
        if q.dtype is not input.dtype:
            raise op_error(op, f"{op}() q tensor must be same dtype as the input tensor "
                           f"({q.dtype.name} vs {input.dtype.name})")
        qs = q
        values = q.tolist() if STATE.tracer is None else []
    else:
        values = list(np.atleast_1d(np.asarray(q, dtype=np.float64)).tolist())
        qs = tensor(values if np.ndim(q) else values[0], dtype=input.dtype,
                    device=input.device)
    if any(not 0 <= v <= 1 for v in np.atleast_1d(values)):
        raise op_error(op, f"{op}() q values must be in the range [0, 1]", ValueError)
    if dim is None:
        x, d = F.reshape(input, (-1,)), None
    else:
        d = _norm_dim(dim, input.ndim)
        x = F.movedim(input, d, -1) if input.ndim else F.reshape(input, (1,))
    s = sort(x, -1).values                                   # ..., n (NaN last)
    n = s.shape[-1]
    nan = F.isnan(x)
    if skip_nan:
        count = F.sum(F.logical_not(nan), -1, keepdim=True).to(input.dtype)
        last = F.eq(count, 0)                  # all NaN: the last value (NaN) is the answer
    else:
        count = F.full((), n, dtype=input.dtype, device=input.device)
        last = F.any(nan, -1, keepdim=True)
    ranks = F.where(last, float(n - 1), F.reshape(qs, (-1,)) * (count - 1))   # ..., Q
    if interpolation == "lower":
        ranks = F.floor(ranks)
    elif interpolation == "higher":
        ranks = F.ceil(ranks)
    elif interpolation == "nearest":
        ranks = F.round(ranks)                 # half to even, as PyTorch's
    below = F.floor(ranks).detach().to(dt.int64)
    out = _gather(s, s.ndim - 1, below, op)
    if interpolation in ("linear", "midpoint"):
        above = _gather(s, s.ndim - 1, F.ceil(ranks).detach().to(dt.int64), op)
        weight = ranks - below.to(ranks.dtype) if interpolation == "linear" else 0.5
        out = F.lerp(out, above, weight)
    out = F.movedim(out, -1, 0)                              # Q, ...
    if keepdim:
        kept = (1,) * input.ndim if d is None else \
            tuple(out.shape[1:1 + d]) + (1,) + tuple(out.shape[1 + d:])
        out = F.reshape(out, (out.shape[0],) + (kept if input.ndim else ()))
    return F.reshape(out, tuple(out.shape[1:])) if qs.ndim == 0 else out
