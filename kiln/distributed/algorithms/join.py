"""`Join`, `Joinable`, `JoinHook` (torch.distributed.algorithms.join): training on uneven inputs.
A rank that runs out of batches leaves its loop and, in `Join.__exit__`, keeps answering the
collectives the still-running ranks make (each Joinable's `main_hook` shadows one iteration's),
until every rank has joined; then each `post_hook` runs once.

One all-reduce per iteration counts the ranks still running: each running rank's first
Joinable adds 1 at the start of its iteration (`Join.notify_join_context`), a joined rank adds
0; when the sum is 0 every rank has joined.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import kiln

__all__ = ["JoinHook", "Joinable", "Join"]


class JoinHook:
    """What a Joinable does for its rank once that rank has joined: `main_hook()` shadows one
    iteration's collectives while some rank still runs; `post_hook(is_last_joiner)` runs once
    every rank has joined."""

    def main_hook(self) -> None:
        """Shadow the collectives of one training iteration of the running ranks."""

    def post_hook(self, is_last_joiner: bool) -> None:
        """Runs once all ranks have joined; `is_last_joiner`: this rank was among the last."""


class _JoinConfig(NamedTuple):
    enable: bool
    throw_on_early_termination: bool
    is_first_joinable: bool

    @staticmethod
    def construct_disabled_join_config() -> "_JoinConfig":
        return _JoinConfig(enable=False, throw_on_early_termination=False,
                           is_first_joinable=False)


class Joinable:
    """A class that takes part in a `Join` (DistributedDataParallel, ZeroRedundancyOptimizer):
    it gives a `join_hook(**kwargs)`, the `join_device` and the `join_process_group`, and calls
    `Join.notify_join_context(self)` before its own per-iteration collectives."""

    def __init__(self) -> None:
        self._join_config = _JoinConfig.construct_disabled_join_config()

    def join_hook(self, **kwargs) -> JoinHook:
        raise NotImplementedError(f"{type(self).__name__} must define join_hook")

    @property
    def join_device(self):
        raise NotImplementedError(f"{type(self).__name__} must define join_device")

    @property
    def join_process_group(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define join_process_group")


def _same_group(a, b) -> bool:
    import kiln.distributed as dist
    world = (None, dist.GroupMember.WORLD)
    return (a in world and b in world) or a is b


class Join:
    """`with Join([model, optimizer]): for batch in my_batches: ...` lets ranks with fewer
    batches finish early without hanging the others (torch.distributed.algorithms.Join).

    enable: False turns the context manager off (inputs known to be even).
    throw_on_early_termination: True makes every rank raise RuntimeError as soon as one rank
    runs out of inputs, instead of shadowing.
    Other keyword arguments go to every Joinable's `join_hook` (DDP reads
    `divide_by_initial_world_size`).
    """

    def __init__(self, joinables: list, enable: bool = True,
                 throw_on_early_termination: bool = False, **kwargs):
        if len(joinables) == 0:
            raise ValueError("The join context manager requires at least one joinable")
        for joinable in joinables:
            if not isinstance(joinable, Joinable):
                raise TypeError(f"Join: {type(joinable).__name__} is not a Joinable; pass "
                                "DistributedDataParallel or ZeroRedundancyOptimizer instances")
        self._joinables = list(joinables)
        self._join_hooks = [joinable.join_hook(**kwargs) for joinable in self._joinables]
        self._enable = enable
        self._throw_on_early_termination = throw_on_early_termination
        for i, joinable in enumerate(self._joinables):
            joinable._join_config = _JoinConfig(enable, throw_on_early_termination, i == 0)
        group = self._joinables[0].join_process_group
        for joinable in self._joinables[1:]:
            if not _same_group(group, joinable.join_process_group):
                raise ValueError("Using join context manager with multiple process groups")
        self._process_group = None if group is kiln.distributed.GroupMember.WORLD else group
        self._device = self._joinables[0].join_device
        self._rank = kiln.distributed.get_rank(self._process_group)

    def __enter__(self) -> "Join":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Shadow the running ranks' iterations until every rank has joined, then run the post
        hooks. An exception inside the block propagates unchanged."""
        try:
            if not self._enable or exc_type is not None:
                return
            is_last_joiner = True
            shadowed = 0
            while self._count_running() > 0:
                if shadowed == 1000:
                    warnings.warn(f"Detected uneven input skew of greater than 1000. This means "
                                  f"that rank {self._rank} has at least 1000 fewer inputs than "
                                  "other currently-active ranks", stacklevel=2)
                if self._throw_on_early_termination:
                    self._notify_procs_to_terminate()
                for hook in self._join_hooks:
                    hook.main_hook()
                is_last_joiner = False
                shadowed += 1
            for hook in self._join_hooks:
                hook.post_hook(is_last_joiner)
        finally:
            for joinable in self._joinables:
                joinable._join_config = _JoinConfig.construct_disabled_join_config()

    def _count_running(self) -> int:
        """Answers the running ranks' `notify_join_context` all-reduce with 0."""
        count = kiln.zeros(1, device=self._device)
        kiln.distributed.all_reduce(count, group=self._process_group)
        return int(count.item())

    def _notify_procs_to_terminate(self) -> None:
        ones = kiln.ones(1, device=self._device)
        kiln.distributed.all_reduce(ones, group=self._process_group)
        raise RuntimeError(f"Rank {self._rank} exhausted all inputs.")

    @staticmethod
    def notify_join_context(joinable: Joinable):
        """Called by a Joinable before its per-iteration collectives: the first Joinable of an
        enabled Join tells the joined ranks this one still runs (an all-reduce of 1), and with
        throw_on_early_termination raises RuntimeError on every rank once one has joined.
        Returns the all-reduced count of running ranks (a tensor), or None."""
        if not hasattr(joinable, "_join_config"):
            raise RuntimeError(f"Check that the {type(joinable).__name__} constructor calls "
                               "the Joinable constructor")
        config = joinable._join_config
        if not config.is_first_joinable or not config.enable:
            return None
        group = joinable.join_process_group
        group = None if group is kiln.distributed.GroupMember.WORLD else group
        running = kiln.ones(1, device=joinable.join_device)
        kiln.distributed.all_reduce(running, group=group)
        if config.throw_on_early_termination:
            zeros = kiln.zeros(1, device=joinable.join_device)
            kiln.distributed.all_reduce(zeros, group=group)
            if zeros.item():
                raise RuntimeError("Detected at least one rank that exhausted inputs. "
                                   "Throwing across all ranks.")
        return running
