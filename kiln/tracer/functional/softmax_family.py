"""The softmax family: softmax, log_softmax, softmin."""

from __future__ import annotations

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer.functional.common import _floating, _norm_dim
from kiln.tracer.functional.reductions import _narrowed, _widened
from kiln.tracer.functional.shapes import reshape
from kiln.tracer.provenance import composite


# ----------------------------------------------------------------------------- softmax family

@composite
def softmax(input, dim=None, dtype=None):
    x = _floating(input if dtype is None else input.to(dtype))
    if x.dtype is dt.float16:
        return _narrowed(softmax(_widened(x), dim), dt.float16)
    if x.ndim == 0:
        return reshape(softmax(reshape(x, (1,)), 0), ())
    d = _norm_dim(-1 if dim is None else dim, x.ndim)
    # x, m, e and the sum share x's floating dtype, so the primitives need no promotion
    m = P.max(x, axes=(d,), keepdim=True).detach() if x._data.shape[d] else x
    e = P.exp(P.sub(x, m))
    return P.div(e, P.sum(e, axes=(d,), keepdim=True))


@composite
def log_softmax(input, dim=None, dtype=None):
    x = _floating(input if dtype is None else input.to(dtype))
    if x.dtype is dt.float16:
        return _narrowed(log_softmax(_widened(x), dim), dt.float16)
    if x.ndim == 0:
        return reshape(log_softmax(reshape(x, (1,)), 0), ())
    d = _norm_dim(-1 if dim is None else dim, x.ndim)
    shifted = x - P.max(x, axes=(d,), keepdim=True).detach() if x.shape[d] else x
    return shifted - P.log(P.sum(P.exp(shifted), axes=(d,), keepdim=True))


@composite
def softmin(input, dim=None, dtype=None):
    return softmax(-input, dim, dtype)
