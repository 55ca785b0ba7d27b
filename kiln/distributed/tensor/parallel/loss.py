"""`loss_parallel()` (torch.distributed.tensor.parallel.loss_parallel): cross-entropy on logits
sharded on the class dimension, without gathering them.

Inside the context, `F.cross_entropy` (and `nn.CrossEntropyLoss`) given a DTensor whose class
dimension is `Shard`ed over a 1-D mesh (ColwiseParallel(use_local_output=False)'s output)
computes the log-sum-exp from each rank's classes with two all-reduces (the max, then the sum
of exponentials) and picks each target's logit on the rank that holds it (a third, summing,
all-reduce). Backward needs no communication: each rank's logit gradient is its slice of
softmax minus one-hot, scaled. The loss is replicated, a DTensor with Replicate().
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import kiln.nn.functional as F
from kiln import Tensor
from kiln.distributed import collectives as C
from kiln.distributed.process_group import ReduceOp
from kiln.distributed.tensor.parallel.redistribute import wrap
from kiln.distributed.tensor.placement import Replicate, chunk_bounds
from kiln.ir import dtypes as dt
from kiln.tracer.custom_function import Function


@contextlib.contextmanager
def loss_parallel() -> Iterator[None]:
    """Within this context, cross-entropy on class-sharded DTensor logits is computed in
    parallel (see the module docstring); other inputs are computed as usual. Class-index
    targets only (no probabilities), replicated; `weight` replicated (all classes);
    `label_smoothing` is not supported (as in torch)."""
    F._CROSS_ENTROPY_OVERRIDES.append(_parallel_cross_entropy)
    try:
        yield
    finally:
        F._CROSS_ENTROPY_OVERRIDES.remove(_parallel_cross_entropy)


def _parallel_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None,
                            ignore_index: int, reduction: str, label_smoothing: float):
    placements = getattr(input, "placements", None)
    if not placements:
        return NotImplemented           # a plain tensor: the ordinary cross_entropy
    class_dim = 0 if input.ndim == 1 else 1
    sharding = [i for i, p in enumerate(placements) if p.is_shard()
                and p.dim % max(input.ndim, 1) == class_dim]
    if len(sharding) != 1:
        raise ValueError(f"loss_parallel() requires exactly one mesh dim to shard tensor "
                         f"dimension {class_dim}, but got placements {placements} with "
                         f"{len(sharding)} such mesh dim(s).")
    mesh = input.device_mesh
    if mesh.ndim != 1:
        raise NotImplementedError(f"loss_parallel: kiln computes it on a 1-D mesh (the tp "
                                  f"mesh); the logits are on a {mesh.ndim}-d mesh {mesh!r}")
    if label_smoothing != 0.0:
        raise ValueError("loss_parallel: label_smoothing is not supported (as in torch); "
                         "compute the loss outside loss_parallel on replicated logits")
    if isinstance(target, Tensor) and target.dtype.is_floating_point:
        raise ValueError("loss_parallel: targets must be class indices (integer tensors); "
                         "class probabilities are not supported (as in torch)")
    if getattr(target, "placements", None) and not all(p.is_replicate()
                                                       for p in target.placements):
        raise ValueError(f"loss_parallel: the target must be replicated, got placements "
                         f"{target.placements}")
    classes = input.global_shape[class_dim]
    want = tuple(input.global_shape[:class_dim]) + tuple(input.global_shape[class_dim + 1:])
    if tuple(target.shape) != want:
        raise ValueError(f"loss_parallel: the target's shape {list(target.shape)} does not "
                         f"match the logits' {list(input.global_shape)}: it must be "
                         f"{list(want)}, the logits' shape without the class dim {class_dim}")
    start, stop, _ = chunk_bounds(classes, mesh.size(), mesh.get_local_rank())
    if stop - start != input.shape[class_dim]:
        raise ValueError(f"loss_parallel: this rank holds {input.shape[class_dim]} classes of "
                         f"{classes}, expected {stop - start} (torch.chunk's split)")
    loss = _ShardedCrossEntropy.apply(input, target, weight, mesh, class_dim, start,
                                      ignore_index, reduction)
    return wrap(loss, Replicate(), mesh)


class _ShardedCrossEntropy(Function):
    """Cross-entropy of class-sharded logits; forward all-reduces max, sum of exp and the
    targets' logits over the mesh; backward is local."""

    @staticmethod
    def forward(ctx, x, target, weight, mesh, class_dim, start, ignore_index, reduction):
        xp = x.device.xp
        wide = x.dtype.itemsize == 2            # 16-bit logits: computed in float32
        logits = xp.moveaxis(x._data, class_dim, -1)
        logits = logits.astype(xp.float32) if wide else logits
        group = mesh.get_group()
        local_max = logits.max(axis=-1) if logits.shape[-1] else \
            xp.full(logits.shape[:-1], -xp.inf, dtype=logits.dtype)
        top = _all_reduced(local_max, x, ReduceOp.MAX, group)
        exps = xp.exp(logits - top[..., None])
        total = _all_reduced(exps.sum(axis=-1), x, ReduceOp.SUM, group)
        labels = target._data
        valid = labels != ignore_index
        safe = xp.where(valid, labels, 0)
        local = safe - start
        mine = (local >= 0) & (local < logits.shape[-1])
        index = xp.clip(local, 0, max(logits.shape[-1] - 1, 0))
        picked = xp.take_along_axis(logits, index[..., None], axis=-1)[..., 0] \
            if logits.shape[-1] else xp.zeros(labels.shape, dtype=logits.dtype)
        picked = _all_reduced(xp.where(mine, picked, 0), x, ReduceOp.SUM, group)
        scale = weight._data.astype(logits.dtype)[safe] if weight is not None else \
            xp.ones(labels.shape, dtype=logits.dtype)
        scale = xp.where(valid, scale, 0)
        per = (top + xp.log(total) - picked) * scale
        if reduction == "none":
            out, denom = per, None
        elif reduction == "sum":
            out, denom = per.sum(), None
        else:
            denom = scale.sum()
            out = per.sum() / denom
        ctx.save = (exps / total[..., None], mine, index, scale, denom, class_dim, wide)
        result = xp.asarray(out, dtype=x._data.dtype)
        return Tensor._make(result, x.dtype, x.device)

    @staticmethod
    def backward(ctx, grad):
        probs, mine, index, scale, denom, class_dim, wide = ctx.save
        xp = grad.device.xp
        g = grad._data.astype(probs.dtype)
        coef = scale * g if denom is None else scale * (g / denom)
        onehot = xp.zeros_like(probs)
        if probs.shape[-1]:
            xp.put_along_axis(onehot, index[..., None], mine[..., None].astype(probs.dtype),
                              axis=-1)
        out = (probs - onehot) * coef[..., None]
        out = xp.ascontiguousarray(xp.moveaxis(out, -1, class_dim))
        out = out.astype(grad._data.dtype) if wide else out
        return (Tensor._make(out, grad.dtype, grad.device), None, None, None, None, None, None,
                None)


def _all_reduced(arr, like: Tensor, op: str, group):
    """The array `arr` (float32 or float64) reduced over `group`, as a new array."""
    xp = like.device.xp
    buf = xp.ascontiguousarray(arr).copy()
    dtype = dt.float32 if buf.dtype == xp.float32 else dt.float64
    C.all_reduce(Tensor._make(buf, dtype, like.device), op, group=group)
    return buf
