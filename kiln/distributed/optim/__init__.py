"""`kiln.distributed.optim.DistributedOptimizer`: one optimizer per worker that owns parameters,
stepped with a distributed autograd context's gradients (torch.distributed.optim)."""

from __future__ import annotations

import threading

__all__ = ["DistributedOptimizer"]


class _LocalOptimizer:
    """Lives on a parameters' owner (made there by `rpc.remote`); steps with the context's
    gradients. One lock for all of them, as torch's: concurrent steps on shared parameters
    would otherwise interleave."""

    _lock = threading.Lock()

    def __init__(self, optimizer_class, param_rrefs: list, args: tuple, kwargs: dict):
        self.params = [rref.local_value() for rref in param_rrefs]
        self.optim = optimizer_class(self.params, *args, **kwargs)

    def step(self, context_id: int) -> None:
        from kiln.distributed import autograd as dist_autograd
        grads = dist_autograd.get_gradients(context_id)
        with _LocalOptimizer._lock:
            # the context's gradients, and None for a parameter it has none for, so a stale
            # .grad from an earlier step is never applied (torch's functional optimizers take
            # the gradient list the same way)
            for param in self.params:
                param.grad = grads.get(param)
            self.optim.step()


def _new_local_optimizer(optimizer_class, param_rrefs, args, kwargs) -> _LocalOptimizer:
    return _LocalOptimizer(optimizer_class, param_rrefs, args, kwargs)


def _step_local(local_rref, context_id: int) -> None:
    local_rref.local_value().step(context_id)


class DistributedOptimizer:
    """`DistributedOptimizer(optimizer_class, params_rref, *args, **kwargs)`: groups the
    parameter RRefs by owner and makes `optimizer_class(params, *args, **kwargs)` on each owner;
    `step(context_id)` steps them all, each with its worker's gradients from that context."""

    def __init__(self, optimizer_class, params_rref: list, *args, **kwargs):
        from kiln.distributed import rpc
        by_owner: dict[int, list] = {}
        for rref in params_rref:
            by_owner.setdefault(rref.owner().id, []).append(rref)
        self.remote_optimizers = [
            rpc.remote(owner, _new_local_optimizer, args=(optimizer_class, rrefs, args, kwargs))
            for owner, rrefs in sorted(by_owner.items())]

    def step(self, context_id: int) -> None:
        """One step of every owner's optimizer with the gradients of `context_id`; returns when
        all are done (an error on any owner is raised here)."""
        from kiln.distributed import rpc
        from kiln.futures import wait_all
        wait_all([rpc.rpc_async(opt.owner(), _step_local, args=(opt, context_id))
                  for opt in self.remote_optimizers])
from kiln.distributed.optim.zero_redundancy_optimizer import (  # noqa: E402,F401
    ZeroRedundancyOptimizer)
