"""torch.distributed's debugging switches: the debug level (`DebugLevel`, read from
TORCH_DISTRIBUTED_DEBUG) and `breakpoint()`, which stops one rank in pdb while the others wait.

kiln checks that ranks agree on every collective (op, shape, dtype, root) at every level,
which is what torch does only at DETAIL; turn that off with KILN_DISTRIBUTED_CHECKS=0. The
level is kept for scripts that read it back or branch on it.
"""

from __future__ import annotations

import enum
import os
import sys


class DebugLevel(enum.Enum):
    """How much torch.distributed checks and logs (OFF, INFO, DETAIL)."""

    OFF = 0
    INFO = 1
    DETAIL = 2


# as torch, the level starts as TORCH_DISTRIBUTED_DEBUG says (a bad value is reported by
# set_debug_level_from_env, not at import)
_LEVEL = [DebugLevel.__members__.get(
    os.environ.get("TORCH_DISTRIBUTED_DEBUG", "OFF").strip().upper(), DebugLevel.OFF)]


def get_debug_level() -> DebugLevel:
    return _LEVEL[0]


def set_debug_level(level: DebugLevel) -> None:
    if not isinstance(level, DebugLevel):
        raise TypeError(f"set_debug_level: expected a DebugLevel (OFF, INFO, DETAIL), got "
                        f"{level!r}")
    _LEVEL[0] = level


def set_debug_level_from_env() -> None:
    """The level named by TORCH_DISTRIBUTED_DEBUG (OFF when unset)."""
    value = os.environ.get("TORCH_DISTRIBUTED_DEBUG", "OFF").strip().upper() or "OFF"
    if value not in DebugLevel.__members__:
        raise ValueError(f"TORCH_DISTRIBUTED_DEBUG={value!r} is not a debug level; use OFF, "
                         "INFO or DETAIL")
    _LEVEL[0] = DebugLevel[value]


def breakpoint(rank: int = 0, skip: int = 0, timeout_s: int = 3600) -> None:
    """Stop rank `rank` in pdb, at the caller's line, while every other rank waits at a
    barrier until it continues. `skip`: let this many calls pass first (counted per process).
    The pdb prompt reads the terminal (/dev/tty) since mpiexec keeps stdin for rank 0."""
    from kiln.distributed import collectives, process_group as pg
    if skip > 0:
        _SKIPS[0] += 1
        if _SKIPS[0] <= skip:
            return
    if pg.get_rank() == rank:
        import pdb
        try:
            stdin = open("/dev/tty")
        except OSError:
            stdin = sys.stdin
        debugger = pdb.Pdb(stdin=stdin)
        debugger.message(f"kiln.distributed.breakpoint: rank {rank} stopped; the other ranks "
                         "wait at a barrier. Type 'c' to continue")
        debugger.set_trace(sys._getframe(1))
    collectives.monitored_barrier(timeout=timeout_s)


_SKIPS = [0]
