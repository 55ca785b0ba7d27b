"""Embedding lookups whose table gradient is not the plain one: sparse (`nn.Embedding(...,
sparse=True)`, `EmbeddingBag`, `F.embedding(..., sparse=True)`: the table's `.grad` is a sparse
COO tensor, as in PyTorch) or scaled by each id's frequency (`scale_grad_by_freq=True`).

Such a lookup is a custom autograd Function. With `sparse=True` (of a leaf table) its backward
returns, instead of a dense table of mostly zero rows, one sparse entry per looked-up id (in
lookup order, uncoalesced; entries of `padding_idx` left out): index = the id, value = the
output gradient of that lookup. Accumulating two such gradients concatenates their entries
(`kiln/tracer/autograd.py`); optimizers that take them are SGD, Adagrad and SparseAdam. With
`scale_grad_by_freq` each lookup's gradient is divided by how often its id occurs in the
input, into a dense gradient (PyTorch refuses it with sparse ones, and so does kiln).

A table that is itself computed (not a leaf) gets a dense gradient: the ops between it and its
leaves have no sparse gradient rules in kiln. Under `@kiln.compile` its backward is a graph
break (a sparse gradient; counting ids and dropping `padding_idx` read values), so the step runs
eagerly.
"""

from __future__ import annotations

import kiln
from kiln import Tensor
from kiln import ops as _core


class _RowLookup(kiln.autograd.Function):
    """weight[ids], whose gradient for weight is sparse (entry k at row ids[k]) or divided by
    each id's count."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int | None, op: str,
                sparse: bool, scale_by_freq: bool) -> Tensor:
        ctx.ids, ctx.padding_idx, ctx.table_shape = ids, padding_idx, tuple(weight.shape)
        ctx.sparse, ctx.scale_by_freq = sparse, scale_by_freq
        return _core.select_rows(weight, 0, ids, op)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ids, values = ctx.ids.to(kiln.int64), grad.reshape((-1,) + ctx.table_shape[1:])
        if ctx.scale_by_freq:
            if ctx.sparse:
                raise RuntimeError("embedding_backward: scale_grad_by_freq not supported with "
                                   "sparse gradients")
            counts = kiln.bincount(ids, minlength=ctx.table_shape[0])[ids]
            values = values / counts.to(values.dtype).reshape((-1,) + (1,) * (values.ndim - 1))
        if ctx.padding_idx is not None:
            kept = ids != ctx.padding_idx
            ids, values = ids[kept], values[kept]
        if not ctx.sparse:
            return values.new_zeros(ctx.table_shape).index_add(0, ids, values), None, None, \
                None, None, None
        n = ids.shape[0]
        table_grad = _core.sparse_from_parts(ids.reshape(1, n), values.clone(), ctx.table_shape,
                                             coalesced=n <= 1)
        return table_grad, None, None, None, None, None


def wants_sparse_grad(weight: Tensor, sparse: bool) -> bool:
    """Whether a lookup into `weight` gives it a sparse gradient: asked for, and `weight` a leaf
    that requires grad, with gradients being recorded."""
    return bool(sparse) and weight.requires_grad and weight.grad_fn is None and \
        kiln.is_grad_enabled()


def lookup_rows(weight: Tensor, ids: Tensor, padding_idx: int | None, op: str,
                sparse: bool = True, scale_grad_by_freq: bool = False) -> Tensor:
    """The rows `weight[ids]` (ids 1-D), with a sparse gradient for `weight` (or with
    `scale_grad_by_freq` a dense one divided by each id's count) that leaves out the entries of
    `padding_idx`; a bad id is `op`'s IndexError."""
    return _RowLookup.apply(weight, ids, padding_idx, op, sparse, scale_grad_by_freq)
