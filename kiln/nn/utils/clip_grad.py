"""Gradient clipping by global norm or by value, computed with tensor ops."""

from __future__ import annotations

import math
from typing import Iterable

import kiln
from kiln import Tensor
from kiln.compiler import note_grads_checked
from kiln.ops import check_values


def _grads(parameters, op: str) -> list:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    note_grads_checked()        # which have a .grad decides what is clipped: a replay's guard
    grads = [p.grad for p in parameters if p.grad is not None]
    if any(g.is_sparse for g in grads):
        # PyTorch 2.13 has no sparse kernel for the norm (clamp_ for clip_grad_value_) either
        raise NotImplementedError(f"{op}: a gradient is sparse (an embedding with sparse=True); "
                                  f"PyTorch cannot clip sparse gradients either: clip the "
                                  f"parameters with dense gradients only")
    return grads


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> Tensor:
    """Scale all gradients together so that their joint norm is at most `max_norm`.

    Returns the joint norm before clipping, as a 0-d tensor.
    """
    parameters = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = _grads(parameters, "clip_grad_norm_")
    if not grads:
        return kiln.tensor(0.0)
    total = get_total_norm(grads, norm_type, error_if_nonfinite)
    # no data-dependent branch: a coefficient clamped to 1 leaves the gradients unchanged
    clip_grads_with_norm_(parameters, max_norm, total)
    return total


clip_grad_norm = clip_grad_norm_


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamp every gradient element into [-clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    with kiln.no_grad():
        for g in _grads(parameters, "clip_grad_value_"):
            g.clamp_(-clip_value, clip_value)


def _sharded(t: Tensor) -> bool:
    """A DTensor holding this rank's piece (FSDP's gradients): its norm needs every piece."""
    return any(p.is_shard() for p in getattr(t, "placements", ()))


def _sharded_part(tensors: list, norm_type: float, dtype) -> Tensor:
    """Over every rank of the pieces' meshes: the largest |x| (inf norm) or the sum of |x|^p.
    Pieces are reduced over the mesh dimensions that shard them only (a 2-D mesh's replicated
    dimension holds copies), grouped by mesh and sharded dimensions, in first-seen order."""
    import kiln.distributed as dist      # only distributed (DTensor) gradients get here
    zero = kiln.zeros((), dtype=dtype, device=tensors[0].device)
    groups: dict = {}
    for t in tensors:
        dims = tuple(i for i, p in enumerate(t.placements) if p.is_shard())
        groups.setdefault((t.device_mesh, dims), []).append(t)
    parts = []
    for (mesh, dims), group in groups.items():
        if norm_type == math.inf:
            part = kiln.stack([t.abs().amax().to(dtype) if t.numel() else zero for t in group])
            part, op = part.amax(), dist.ReduceOp.MAX
        else:
            part = kiln.stack([kiln.norm(t, norm_type).to(dtype) ** norm_type if t.numel()
                               else zero for t in group]).sum()
            op = dist.ReduceOp.SUM
        part = part.clone()
        for dim in dims:
            dist.all_reduce(part, op, group=mesh.get_group(dim))
        parts.append(part)
    return kiln.stack(parts).amax() if norm_type == math.inf else kiln.stack(parts).sum()


def get_total_norm(tensors: Iterable[Tensor] | Tensor, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """The norm of the norms of `tensors` (their joint norm, as if concatenated). Gradients
    sharded over ranks (FSDP's DTensors) count with every rank's piece, so every rank gets the
    same norm, the one of the whole gradients."""
    tensors = [tensors] if isinstance(tensors, Tensor) else [t for t in tensors]
    norm_type = float(norm_type)
    if not tensors:
        return kiln.tensor(0.0)
    with kiln.no_grad():
        dtype = tensors[0].dtype
        pieces = [t for t in tensors if _sharded(t)]
        tensors = [t for t in tensors if not _sharded(t)]
        if norm_type == math.inf:
            parts = [t.abs().amax().to(dtype) for t in tensors]
            if pieces:
                parts.append(_sharded_part(pieces, norm_type, dtype))
            total = kiln.stack(parts).amax()
        else:
            parts = [kiln.norm(t, norm_type).to(dtype) for t in tensors]
            if pieces:
                parts.append(_sharded_part(pieces, norm_type, dtype) ** (1.0 / norm_type))
            total = kiln.norm(kiln.stack(parts), norm_type)
        if error_if_nonfinite:
            # PyTorch reads the norm into Python to check it; traced, a graph node checks it on
            # every replay instead of the step breaking the graph
            total = check_values(total, kiln.isfinite(total), "clip_grad_norm_",
                                 f"The total norm of order {norm_type} for gradients from "
                                 f"`parameters` is non-finite, so it cannot be clipped. To "
                                 f"disable this error and scale the gradients by the non-finite "
                                 f"norm anyway, set `error_if_nonfinite=False`", RuntimeError)
    return total


def clip_grads_with_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                          total_norm: Tensor, foreach: bool | None = None) -> None:
    """Scale the gradients by max_norm / total_norm when that is below 1."""
    with kiln.no_grad():
        coef = kiln.clamp_max(float(max_norm) / (total_norm + 1e-6), 1.0)
        for g in _grads(parameters, "clip_grads_with_norm_"):
            g.mul_(coef.to(g.dtype))
