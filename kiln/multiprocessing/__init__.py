"""`kiln.multiprocessing`: Python's multiprocessing, with kiln tensors sent through shared
memory (torch.multiprocessing).

Every name of `multiprocessing` is here. Importing this module registers a reducer so that a
tensor put on a queue, sent down a pipe or passed to a Process is moved to shared memory and
received as a view of the same memory, not copied. `spawn(fn, args, nprocs)` starts `nprocs`
processes running `fn(i, *args)` (as one MPI job when it can, so that they can form a process
group) and raises if any of them fails.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import *  # noqa: F401,F403  (a drop-in: every name of multiprocessing)

from kiln.multiprocessing.reductions import init_reductions
from kiln.multiprocessing.spawn import (ProcessContext, ProcessExitedException,  # noqa: F401
                                        ProcessRaisedException, spawn, start_processes)

__all__ = list(multiprocessing.__all__) + [
    "spawn", "start_processes", "ProcessContext", "ProcessRaisedException",
    "ProcessExitedException", "get_sharing_strategy", "set_sharing_strategy",
    "get_all_sharing_strategies"]

init_reductions()


def get_all_sharing_strategies() -> set[str]:
    return {"file_descriptor"}


def get_sharing_strategy() -> str:
    return "file_descriptor"


def set_sharing_strategy(new_strategy: str) -> None:
    if new_strategy != "file_descriptor":
        raise ValueError(f"kiln.multiprocessing shares memory by file descriptor only, not "
                         f"{new_strategy!r}")
