"""Sparse gradients of embedding lookups (`nn.Embedding(..., sparse=True)`, `EmbeddingBag`,
`F.embedding(..., sparse=True)`): the table's `.grad` is a sparse COO tensor, as in PyTorch.

A lookup with `sparse=True` of a leaf table is a custom autograd Function whose backward
returns, instead of a dense table of mostly zero rows, one sparse entry per looked-up id (in
lookup order, uncoalesced; entries of `padding_idx` left out): index = the id, value = the
output gradient of that lookup. Accumulating two such gradients concatenates their entries
(`kiln/tracer/autograd.py`); optimizers that take them are SGD, Adagrad and SparseAdam.

A table that is itself computed (not a leaf) gets a dense gradient: the ops between it and its
leaves have no sparse gradient rules in kiln. Under `@kiln.compile` the Function is a graph
break, so the lookup's backward runs eagerly.
"""

from __future__ import annotations

import kiln
from kiln import Tensor
from kiln import ops as _core


class _SparseRowLookup(kiln.autograd.Function):
    """weight[ids] whose gradient for weight is sparse: entry k at row ids[k]."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int | None, op: str) -> Tensor:
        ctx.ids, ctx.padding_idx, ctx.table_shape = ids, padding_idx, tuple(weight.shape)
        return _core.select_rows(weight, 0, ids, op)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ids, values = ctx.ids, grad
        if ctx.padding_idx is not None:
            kept = ids != ctx.padding_idx
            ids, values = ids[kept], values[kept]
        n = ids.shape[0]
        table_grad = _core.sparse_from_parts(
            ids.reshape(1, n).to(kiln.int64), values.reshape((n,) + ctx.table_shape[1:]).clone(),
            ctx.table_shape, coalesced=n <= 1)
        return table_grad, None, None, None


def wants_sparse_grad(weight: Tensor, sparse: bool) -> bool:
    """Whether a lookup into `weight` gives it a sparse gradient: asked for, and `weight` a leaf
    that requires grad, with gradients being recorded."""
    return bool(sparse) and weight.requires_grad and weight.grad_fn is None and \
        kiln.is_grad_enabled()


def lookup_rows(weight: Tensor, ids: Tensor, padding_idx: int | None, op: str) -> Tensor:
    """The rows `weight[ids]` (ids 1-D), with a sparse gradient for `weight` that leaves out
    the entries of `padding_idx`; a bad id is `op`'s IndexError."""
    return _SparseRowLookup.apply(weight, ids, padding_idx, op)
