"""DistributedDataParallel: one model replica per rank, gradients averaged across ranks.

At construction rank 0's parameters and buffers are copied to every rank; each backward
all-reduces gradients in buckets as they become ready (`kiln.distributed.reducer`), so after
`loss.backward()` every rank holds the same averaged gradient and an optimizer step keeps the
replicas identical.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import kiln
import kiln.distributed as dist
from kiln import Tensor
from kiln.distributed.reducer import Reducer
from kiln.nn.module import Module


class DistributedDataParallel(Module):
    """torch.nn.parallel.DistributedDataParallel over kiln's default process group.

    `state_dict()` keys carry the `module.` prefix, as PyTorch's do; save
    `ddp.module.state_dict()` to get a checkpoint a plain model loads. `device_ids`,
    `output_device`, `dim`, `check_reduction`, `gradient_as_bucket_view` and `static_graph` are
    accepted and change nothing (one device per process; gradients are copied out of buckets).
    """

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0,
                 broadcast_buffers: bool = True, process_group=None,
                 bucket_cap_mb: float | None = None, find_unused_parameters: bool = False,
                 check_reduction: bool = False, gradient_as_bucket_view: bool = False,
                 static_graph: bool = False, init_sync: bool = True) -> None:
        super().__init__()
        if process_group is not None and process_group is not dist.GroupMember.WORLD:
            raise ValueError("DistributedDataParallel: kiln supports only the default process "
                             "group (process_group=None)")
        if not dist.is_initialized():
            raise RuntimeError("DistributedDataParallel: call kiln.distributed."
                               "init_process_group() first")
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.bucket_cap_mb = 25.0 if bucket_cap_mb is None else float(bucket_cap_mb)
        seen, params = set(), []
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        self._verify_same_model(params)
        if init_sync:
            with kiln.no_grad():
                for t in list(module.parameters()) + list(self._buffers_to_sync()):
                    dist.broadcast(t.data, src=0)
        self.reducer = Reducer(params, self.bucket_cap_mb, find_unused_parameters)
        # the hooks live on the parameters, which may outlive this wrapper
        weakref.finalize(self, self.reducer.close)
        self.require_backward_grad_sync = True

    def _buffers_to_sync(self) -> list[Tensor]:
        return [b for b in self.module.buffers() if b is not None]

    def _verify_same_model(self, params: list[Tensor]) -> None:
        mine = [(p.dtype.name, tuple(p.shape)) for p in params]
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        for rank, theirs in enumerate(everyone):
            if theirs != mine:
                diff = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b),
                            min(len(mine), len(theirs)))
                a = mine[diff] if diff < len(mine) else "none"
                b = theirs[diff] if diff < len(theirs) else "none"
                raise RuntimeError(
                    f"DistributedDataParallel: rank {dist.get_rank()} has {len(mine)} parameters, "
                    f"rank {rank} has {len(theirs)}; parameter {diff} is {a} here and {b} "
                    "there. Every rank must wrap the same model")

    def forward(self, *inputs, **kwargs):
        self.reducer.forward_begins()
        if self.broadcast_buffers and dist.get_world_size() > 1 and \
                self.require_backward_grad_sync:
            with kiln.no_grad():
                for b in self._buffers_to_sync():
                    dist.broadcast(b.data, src=0)
        out = self.module(*inputs, **kwargs)
        if kiln.is_grad_enabled() and self.require_backward_grad_sync:
            self.reducer.sync = True
            self.reducer.prepare_for_backward(_tensors_in(out))
        else:
            self.reducer.sync = False
        return out

    @contextmanager
    def no_sync(self):
        """Inside, backward only accumulates local gradients; the first backward after it
        all-reduces the accumulated sum (gradient accumulation without extra communication)."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old


class DataParallel(Module):
    """torch.nn.DataParallel on one device: calls the wrapped module (kiln runs one device per
    process; use DistributedDataParallel to use several)."""

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0):
        super().__init__()
        if device_ids is not None and len(device_ids) > 1:
            raise ValueError("DataParallel: kiln runs one device per process; for several use "
                             "DistributedDataParallel with one rank per device")
        self.module = module
        self.device_ids, self.output_device, self.dim = device_ids, output_device, dim

    def forward(self, *inputs, **kwargs):
        return self.module(*inputs, **kwargs)


def _tensors_in(obj) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors_in(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _tensors_in(x)]
    return []
