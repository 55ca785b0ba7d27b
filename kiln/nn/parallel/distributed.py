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
from kiln.compiler import is_compiling
from kiln import Tensor
from kiln.distributed.algorithms.join import Join, JoinHook, Joinable
from kiln.distributed.reducer import Reducer
from kiln.nn.module import Module


class _DDPJoinHook(JoinHook):
    """A joined rank's DDP: each shadowed iteration answers the forward's collectives (buffer
    broadcast, whether backward syncs) and, if it does, every bucket's all-reduce with zero
    gradients; at the end the model of a last joiner is broadcast to every rank."""

    def __init__(self, ddp: "DistributedDataParallel", divide_by_initial_world_size: bool):
        self.ddp = ddp
        ddp._divide_by_initial_world_size = divide_by_initial_world_size

    def main_hook(self) -> None:
        ddp = self.ddp
        if ddp._syncs_buffers(ddp.require_forward_param_sync):
            ddp._sync_buffers_from(ddp._find_common_rank(False))
        flag = kiln.zeros(1)
        dist.all_reduce(flag)
        should_sync = bool(flag.item())
        ddp.require_forward_param_sync = should_sync
        if should_sync:
            ddp.reducer.shadow_backward()

    def post_hook(self, is_last_joiner: bool) -> None:
        ddp = self.ddp
        src = ddp._find_common_rank(is_last_joiner)
        with kiln.no_grad():
            for t in list(ddp.module.parameters()) + list(ddp._buffers_to_sync()):
                dist.broadcast(t.data, src=src)


class DistributedDataParallel(Module, Joinable):
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
        self.reducer.forward_param_sync = True
        self._divide_by_initial_world_size = True
        Joinable.__init__(self)

    @property
    def require_forward_param_sync(self) -> bool:
        """Whether the last forward was followed by a synchronizing backward (a Join reads it).
        Kept on the reducer: the forward's bookkeeping, which a compiled replay repeats, not
        the module's state."""
        return self.reducer.forward_param_sync

    @require_forward_param_sync.setter
    def require_forward_param_sync(self, value: bool) -> None:
        self.reducer.forward_param_sync = value

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
        joining = self._join_config.enable
        running = Join.notify_join_context(self)
        self.reducer.divisor = None
        if running is not None and not self._divide_by_initial_world_size:
            self.reducer.divisor = int(running.item())
        # under a Join, as in torch, whether the previous forward synced decides (a joined
        # rank knows that one), and rank 0 may have stopped: the highest running rank's
        # buffers win
        if self._syncs_buffers(self.require_forward_param_sync if joining
                               else self.require_backward_grad_sync):
            if is_compiling() and not joining:      # as nodes of the compiled program
                self.reducer.traced_broadcast(self._buffers_to_sync(), src=0)
            else:
                self._sync_buffers_from(self._find_common_rank(True) if joining else 0)
        if joining:     # tell the joined ranks whether this iteration's backward syncs
            flag = kiln.ones(1) if self.require_backward_grad_sync and \
                kiln.is_grad_enabled() else kiln.zeros(1)
            dist.all_reduce(flag)
        out = self.module(*inputs, **kwargs)
        if is_compiling():
            # a replay runs the forward's tensor program only; the reducer is armed after it,
            # from the flags as they are then (`no_sync()` between calls)
            if self.find_unused_parameters:
                self.reducer.break_trace("with find_unused_parameters=True it walks the "
                                         "outputs' autograd graph")
            self.reducer.arm_on_replay(self._arm_reducer)
        self._arm_reducer(out)
        return out

    def _arm_reducer(self, out=()) -> None:
        """Tell the reducer whether the next backward all-reduces gradients (and, with
        find_unused_parameters, which parameters `out` does not depend on)."""
        self.require_forward_param_sync = kiln.is_grad_enabled() and \
            self.require_backward_grad_sync
        if kiln.is_grad_enabled() and self.require_backward_grad_sync:
            self.reducer.sync = True
            self.reducer.prepare_for_backward(_tensors_in(out))
        else:
            self.reducer.sync = False

    def _syncs_buffers(self, syncing: bool) -> bool:
        return self.broadcast_buffers and dist.get_world_size() > 1 and syncing and \
            bool(self._buffers_to_sync())

    def _sync_buffers_from(self, src: int) -> None:
        with kiln.no_grad():
            for b in self._buffers_to_sync():
                dist.broadcast(b.data, src=src)

    def _find_common_rank(self, candidate: bool) -> int:
        """The highest rank among those passing `candidate=True` (all ranks call it)."""
        rank = kiln.tensor([dist.get_rank() if candidate else -1])
        dist.all_reduce(rank, op=dist.ReduceOp.MAX)
        return int(rank.item())

    # ----------------------------------------------------------------------- comm hooks, join
    def register_comm_hook(self, state, hook) -> None:
        """Reduce each gradient bucket with `hook(state, bucket)` instead of the built-in
        average: `bucket` is a GradBucket, and the hook returns a kiln.futures.Future of the
        bucket's averaged gradients (a flat tensor); see
        kiln.distributed.algorithms.ddp_comm_hooks. Register once, before training."""
        if not callable(hook):
            raise TypeError(f"register_comm_hook: hook must be callable, got "
                            f"{type(hook).__name__}")
        if self.reducer.comm_hook is not None:
            raise RuntimeError("register_comm_hook can only be called once.")
        self.reducer.comm_hook = (state, hook)

    def join(self, divide_by_initial_world_size: bool = True, enable: bool = True,
             throw_on_early_termination: bool = False) -> Join:
        """`with model.join(): ...` trains on uneven inputs: a rank out of batches shadows
        the others' all-reduces with zero gradients until all are done (Join([self])).
        divide_by_initial_world_size=True averages over all ranks (a joined rank counts as
        a zero gradient); False, over the ranks still running."""
        return Join([self], enable, throw_on_early_termination,
                    divide_by_initial_world_size=divide_by_initial_world_size)

    def join_hook(self, **kwargs) -> JoinHook:
        return _DDPJoinHook(self, kwargs.get("divide_by_initial_world_size", True))

    @property
    def join_device(self):
        params = list(self.module.parameters())
        return params[0].device if params else kiln.device("cpu")

    @property
    def join_process_group(self):
        return dist.GroupMember.WORLD

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
