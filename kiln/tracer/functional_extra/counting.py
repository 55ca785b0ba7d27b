"""Counting and searching: searchsorted, bucketize, histc, histogram, bincount, unique, isin,
aminmax, hash_tensor. Sizes that depend on the data read values into Python (a graph break when
compiled)."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.tracer import functional as F
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _as_tensor, _norm_dim
from kiln.tracer.functional.common import refuse_without_kernel
from kiln.tracer.functional_extra.common import _f
from kiln.tracer.tensor import STATE, WRAPPERS, Tensor, dispatches
from kiln.tracer.unsigned import check as _check_unsigned


# ----------------------------------------------------------------------------- counting

def searchsorted(sorted_sequence, input, *, out_int32=False, right=False, side=None,
                 sorter=None):
    if side is not None:
        right = side == "right"
    seq = sorted_sequence
    refuse_without_kernel("searchsorted", seq)
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
    """PyTorch's rule: the range's ends in double, then in x's type (a zero-width range
    widened by 1 each way), and bin floor((x - lo) * bins / (hi - lo)) in x's arithmetic."""
    refuse_without_kernel("histc", input, (dt.BOOL, dt.INT))
    x = _f(input).detach()
    lo, hi = float(min), float(max)
    if lo == hi and x.numel():
        # the data's range, kept as tensors (no read into Python: it traces)
        lo, hi = F.amin(x).to(dt.float64), F.amax(x).to(dt.float64)
        same = F.eq(lo, hi)
        lo, hi = F.where(same, lo - 1, lo).to(x.dtype), F.where(same, hi + 1, hi).to(x.dtype)
    else:
        if lo == hi:
            lo, hi = lo - 1, hi + 1
        lo, hi = (F.full((), v, dtype=x.dtype, device=x.device) for v in (lo, hi))
    inside = F.logical_and(F.ge(x, lo), F.le(x, hi))
    idx = F.floor((x - lo) * bins / (hi - lo)).to(dt.int64)
    idx = F.clamp(idx, 0, bins - 1)
    hits = F.logical_and(F.eq(F.unsqueeze(F.reshape(idx, (-1,)), -1),
                              F.arange(bins, device=x.device)),
                         F.unsqueeze(F.reshape(inside, (-1,)), -1))
    return F.sum(hits, 0).to(x.dtype)


def histogram(input, bins=100, *, range=None, weight=None, density=False):
    data = input._host("histogram()")
    w = None if weight is None else weight._host("histogram()")
    edges_arg = bins._host("histogram()") if isinstance(bins, Tensor) else bins
    hist, edges = np.histogram(data, bins=edges_arg, range=range, weights=w, density=density)
    H = namedtuple("histogram", ["hist", "bin_edges"])
    return H(_as_tensor(hist.astype(input.dtype.np), input),
             _as_tensor(edges.astype(input.dtype.np), input))


def bincount(input, weights=None, minlength=0):
    _check_unsigned("bincount", input)
    data = input._host("bincount()")
    if data.ndim != 1:
        raise op_error("bincount", f"bincount only supports 1-d non-negative integral inputs, "
                       f"got shape {list(data.shape)}")
    if data.size and data.min() < 0:
        raise op_error("bincount", f"bincount only supports 1-d non-negative integral inputs, "
                       f"got {int(data.min())}")
    w = None if weights is None else weights._host("bincount()")
    if w is not None and w.shape != data.shape:
        raise op_error("bincount", f"weights should be 1-d and have the same length as input: "
                       f"weights of shape {list(w.shape)}, input of shape {list(data.shape)}")
    out = np.bincount(data, weights=w, minlength=minlength)
    kind = dt.int64 if weights is None else (weights.dtype if weights.dtype.is_floating_point
                                             else dt.float64)
    return _as_tensor(out.astype(kind.np), input)


def _constants_if_constant(input, out: list):
    """unique's results, or unique_consecutive's: constants of the trace when `input` is one
    (a trace reads such an input's values without a break, `Tracer.value_read`)."""
    if STATE.tracer is not None and STATE.tracer.is_constant(input):
        for t in out:
            STATE.tracer.constant(t)
    return out[0] if len(out) == 1 else tuple(out)


def unique(input, sorted=True, return_inverse=False, return_counts=False, dim=None):
    if dim is None and WRAPPERS[0] and dispatches(input):    # its class finds them
        from kiln.tracer.dispatch_subclass import call
        values, inverse, counts = call("_unique2.default", (input,), {
            "sorted": sorted, "return_inverse": return_inverse, "return_counts": return_counts})
        out = (values,) + ((inverse,) if return_inverse else ()) + (
            (counts,) if return_counts else ())
        return out[0] if len(out) == 1 else out
    data = input._host("unique()")
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
    return _constants_if_constant(input, out)


def unique_consecutive(input, return_inverse=False, return_counts=False, dim=None):
    data = input._host("unique_consecutive()")
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
        if moved.shape[0] > 1:        # (a slice may have no elements: no -1 in the reshape)
            rest = math.prod(moved.shape[1:])
            starts[1:] = np.any((moved[1:] != moved[:-1]).reshape(moved.shape[0] - 1, rest),
                                axis=1)
        values = np.moveaxis(moved[starts], 0, d)
        inverse = np.cumsum(starts) - 1
    counts = np.diff(np.append(np.flatnonzero(starts), starts.shape[0]))
    out = [_as_tensor(np.ascontiguousarray(values).astype(input.dtype.np), input)]
    if return_inverse:
        out.append(_as_tensor(inverse.astype(np.int64), input))
    if return_counts:
        out.append(_as_tensor(counts.astype(np.int64), input))
    return _constants_if_constant(input, out)


def isin(elements, test_elements, *, assume_unique=False, invert=False):
    _check_unsigned("isin", elements, test_elements)
    if getattr(elements, "dtype", None) is dt.bool_:
        raise op_error("isin", "Unsupported input type encountered for isin(): Bool (as "
                       "PyTorch); compare x.long() instead")
    e = elements if isinstance(elements, Tensor) else _as_tensor(elements)
    t = test_elements if isinstance(test_elements, Tensor) else _as_tensor(test_elements, e)
    hit = F.any(F.eq(F.unsqueeze(e, -1), F.reshape(t, (-1,))), -1) if t.numel() else \
        F.zeros(tuple(e.shape), dtype=dt.bool_, device=e.device)
    return F.logical_not(hit) if invert else hit


def aminmax(input, *, dim=None, keepdim=False):
    R = namedtuple("aminmax", ["min", "max"])
    return R(F.amin(input, dim, keepdim), F.amax(input, dim, keepdim))


def hash_tensor(input, dim=None, *, keepdim=False, mode=0):
    """XOR of the elements' 64-bit patterns (floats as float64, integers and bools as int64),
    over `dim` (all by default): a uint64 fingerprint, equal for equal values."""
    if mode != 0:
        raise op_error("hash_tensor", f"Unknown hash_tensor mode: {mode} (only 0, the XOR "
                       "reduction)")
    if input.dtype.is_complex:
        raise op_error("hash_tensor", f"\"xor_sum_cpu\" not implemented for complex tensors "
                       f"({input.dtype.name}); hash torch.view_as_real of it", NotImplementedError)
    if dim is None:
        if input.numel() == 0:
            raise op_error("hash_tensor", "Expected reduction dim to be specified for "
                           "input.numel() == 0. Specify the reduction dim with the 'dim' argument.")
        axes = None
    else:
        axes = tuple(_norm_dim(d, input.ndim) for d in ((dim,) if isinstance(dim, int) else dim))
        for d in axes:
            if input.ndim and input.shape[d] == 0:
                raise op_error("hash_tensor", f"Expected reduction dim {d} to have non-zero size.",
                               IndexError)
    wide = input.to(dt.float64 if input.dtype.is_floating_point else dt.int64)
    xp = input.device.xp
    bits = xp.ascontiguousarray(wide._read("hash_tensor()")).view(np.uint64)
    out = xp.bitwise_xor.reduce(bits, axis=axes if input.ndim else None,
                                keepdims=bool(keepdim) and input.ndim > 0)
    return Tensor._make(xp.asarray(out, dtype=np.uint64), dt.uint64, input.device)
