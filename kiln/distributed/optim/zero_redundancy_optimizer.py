"""`ZeroRedundancyOptimizer` (torch.distributed.optim): ZeRO stage 1. Each rank keeps optimizer
state only for its own partition of the parameters, steps a local optimizer over that
partition, then every parameter is broadcast from the rank that owns it, so all replicas agree.

The partition is torch's: per parameter group, parameters largest first, each to the rank with
the fewest elements so far (counted over all groups), so a full state dict has torch's layout
and a checkpoint moves between kiln and torch.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Callable

import numpy as np

import kiln
import kiln.distributed as dist
from kiln import Tensor
from kiln.distributed.algorithms.join import Join, JoinHook, Joinable
from kiln.optim.optimizer import Optimizer, _cast_state

__all__ = ["ZeroRedundancyOptimizer"]


class _ZeROJoinHook(JoinHook):
    """Once its rank has joined, each shadowed iteration steps the optimizer (with the
    gradients it has) so the running ranks' parameter broadcasts are answered."""

    def __init__(self, zero: "ZeroRedundancyOptimizer"):
        self.zero = zero

    def main_hook(self) -> None:
        self.zero.step()


class ZeroRedundancyOptimizer(Optimizer, Joinable):
    """`ZeroRedundancyOptimizer(params, optimizer_class, process_group=None,
    parameters_as_bucket_view=False, overlap_with_ddp=False, **defaults)`.

    Every rank must construct it with the same parameters in the same order and call `step`,
    `add_param_group`, `consolidate_state_dict` and `load_state_dict` together. `param_groups`
    are the global groups (an LR scheduler changes them; `step` copies them to the local
    optimizer). `parameters_as_bucket_view` is accepted and changes nothing (parameters are
    broadcast one by one); `overlap_with_ddp=True` is refused.
    """

    def __init__(self, params, optimizer_class: type, process_group=None,
                 parameters_as_bucket_view: bool = False, overlap_with_ddp: bool = False,
                 **defaults: Any):
        if overlap_with_ddp:
            raise ValueError("ZeroRedundancyOptimizer: overlap_with_ddp=True (the optimizer "
                             "step inside DDP's communication hook) is not supported in kiln; "
                             "pass overlap_with_ddp=False and call step() after backward")
        if isinstance(params, Tensor):
            raise TypeError("`params` argument should be an iterable of Tensors, but got "
                            f"{type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError("ZeroRedundancyOptimizer got an empty parameter list")
        if all(isinstance(p, Tensor) for p in params):
            all_params = params
        elif all(isinstance(p, dict) for p in params):
            if any("params" not in g for g in params):
                raise ValueError("Each parameter group passed-in via `params` must have a "
                                 "'params' key mapping to the parameters in the group")
            all_params = [p for g in params for p in (
                [g["params"]] if isinstance(g["params"], Tensor) else list(g["params"]))]
        else:
            raise TypeError("`params` argument should be an iterable of Tensors or dicts")
        self._all_params = all_params
        self.initialized = False
        Optimizer.__init__(self, params, defaults)
        Joinable.__init__(self)
        self.process_group = process_group if process_group is not None else \
            dist.GroupMember.WORLD
        self._group = None if self.process_group is dist.GroupMember.WORLD else process_group
        self.world_size = dist.get_world_size(self._group)
        self.rank = dist.get_rank(self._group)
        self.global_rank = dist.get_global_rank(self._group, self.rank) \
            if self._group is not None else self.rank
        self._default_device = all_params[0].device
        self._optim_defaults = defaults
        self._optim_constructor = optimizer_class
        self.parameters_as_bucket_view = parameters_as_bucket_view
        self._partition_cache: list[list[dict]] = []
        self._param_to_rank_cache: dict[int, int] = {}
        self._all_state_dicts: list[dict] = []
        self.optim = optimizer_class(self._partition_parameters()[self.rank],
                                     **self._optim_defaults)
        _sync_param_groups(self.optim.param_groups, self.param_groups)
        self.initialized = True

    # ----------------------------------------------------------------------- partition
    def _clear_cache(self) -> None:
        self._partition_cache = []
        self._param_to_rank_cache = {}

    def _partition_parameters(self) -> list[list[dict]]:
        """For each rank, its parameter groups: copies of the global groups holding the
        parameters it owns (torch's greedy partition, largest parameters first)."""
        if not self._partition_cache:
            per_rank: list[list[dict]] = [[] for _ in range(self.world_size)]
            sizes = [0] * self.world_size
            for group in self.param_groups:
                owned: list[list[Tensor]] = [[] for _ in range(self.world_size)]
                for p in sorted(group["params"], key=lambda t: t.numel(), reverse=True):
                    rank = sizes.index(min(sizes))
                    owned[rank].append(p)
                    sizes[rank] += p.numel()
                for rank, ps in enumerate(owned):
                    local = {k: v for k, v in group.items() if k != "params"}
                    local["params"] = ps
                    per_rank[rank].append(local)
            self._partition_cache = per_rank
        return self._partition_cache

    @property
    def _param_to_rank(self) -> dict[int, int]:
        """id(parameter) -> the rank that owns it."""
        if not self._param_to_rank_cache:
            for rank, groups in enumerate(self._partition_parameters()):
                for group in groups:
                    for p in group["params"]:
                        self._param_to_rank_cache[id(p)] = rank
        return self._param_to_rank_cache

    @property
    def _index_to_param(self) -> list[Tensor]:
        return list(chain.from_iterable(g["params"] for g in self.param_groups))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group on every rank (call it on all ranks together); the new group's
        parameters are partitioned, the earlier ones keep their owners."""
        super().add_param_group(param_group)
        if self.initialized:
            self._clear_cache()
            groups = self._partition_parameters()[self.rank]
            if len(groups) == len(self.optim.param_groups) + 1:
                self.optim.add_param_group(groups[-1])

    # ----------------------------------------------------------------------- stepping
    def step(self, closure: Callable[[], Any] | None = None, **kwargs):
        """Step the local optimizer over this rank's partition (with the global groups'
        hyperparameters), then broadcast every parameter from its owner."""
        Join.notify_join_context(self)
        _sync_param_groups(self.param_groups, self.optim.param_groups)
        if closure is None:
            loss = self.optim.step(**kwargs)
        else:
            loss = self.optim.step(closure=closure, **kwargs)
        _sync_param_groups(self.optim.param_groups, self.param_groups)
        self._sync_params()
        return loss

    def _sync_params(self) -> None:
        """Every parameter from its owner, all broadcasts started before any is waited."""
        works = []
        with kiln.no_grad():
            for rank, groups in enumerate(self._partition_parameters()):
                src = dist.get_global_rank(self._group, rank) if self._group is not None \
                    else rank
                for group in groups:
                    for p in group["params"]:
                        works.append(dist.broadcast(p.data, src=src, group=self._group,
                                                    async_op=True))
        for work in works:
            work.wait()

    # ----------------------------------------------------------------------- join
    def join_hook(self, **kwargs) -> JoinHook:
        return _ZeROJoinHook(self)

    @property
    def join_device(self):
        return self._default_device

    @property
    def join_process_group(self):
        return self.process_group

    # ----------------------------------------------------------------------- checkpoints
    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's local optimizer state on rank `to` (a rank of the group; the
        states travel pickled, as NumPy arrays); call it on all ranks, then `state_dict()` on
        rank `to`."""
        _sync_param_groups(self.param_groups, self.optim.param_groups)
        local = _to_plain(self.optim.state_dict())
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, local if self.rank != to else None, group=self._group)
        if self.rank == to:
            gathered[self.rank] = local
            self._all_state_dicts = gathered
        else:
            self._all_state_dicts = []

    def state_dict(self) -> dict[str, Any]:
        """The full optimizer state in torch's layout (global parameter indices), from the
        last `consolidate_state_dict` to this rank."""
        if not self._all_state_dicts:
            raise RuntimeError("Optimizer state has not been consolidated on this rank. Please "
                               f"call `consolidate_state_dict(to={self.rank})` on all ranks "
                               "beforehand if you meant to save the global state.")
        full = Optimizer.state_dict(self)
        index = {id(p): i for i, p in enumerate(self._index_to_param)}
        for rank, local in enumerate(self._all_state_dicts):
            owned = self._partition_parameters()[rank]
            for local_group, group in zip(local["param_groups"], owned):
                for local_index, p in zip(local_group["params"], group["params"]):
                    if local_index in local["state"]:
                        full["state"][index[id(p)]] = {
                            k: kiln.tensor(v) if isinstance(v, np.ndarray) else v
                            for k, v in local["state"][local_index].items()}
        full["state"] = dict(sorted(full["state"].items()))
        return full

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a full state dict: each rank takes the state of the parameters it owns."""
        params = self._index_to_param
        for key, value in state_dict["state"].items():
            p = params[int(key)]
            if self._param_to_rank[id(p)] == self.rank and value is not None:
                self.optim.state[p] = {k: _cast_state(p, k, v) for k, v in value.items()}
        Optimizer.load_state_dict(self, {"state": {},
                                         "param_groups": state_dict["param_groups"]})
        self._clear_cache()
        _sync_param_groups(self.param_groups, self.optim.param_groups)


def _sync_param_groups(src: list[dict], dst: list[dict]) -> None:
    """Copy every option except the parameters from each group of `src` to `dst`'s."""
    if len(src) != len(dst):
        raise RuntimeError(f"ZeroRedundancyOptimizer: {len(src)} parameter groups here and "
                           f"{len(dst)} in the local optimizer; add groups with "
                           "add_param_group on the ZeroRedundancyOptimizer")
    for s, d in zip(src, dst):
        for key in s.keys():
            if key != "params":
                d[key] = dict.__getitem__(s, key)     # not a user read of a traced number


def _to_plain(value):
    """A state dict with its tensors as NumPy arrays (copies), to pickle between ranks."""
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value
