"""`profile.export_memory_timeline`: the bytes a trace's ops held over time, as torch's JSON.

torch writes `[times, sizes]`: times in microseconds since the epoch, and for each time a row
of nine byte counts, one per category its memory profiler infers (slot 0 unused, then
parameter, optimizer state, input, temporary, activation, gradient, autograd detail, and
uncategorized last). kiln does not infer categories: every byte it counted is uncategorized.
It counts what the ops allocated during the trace (see `kiln.profiler.memory`), and, from the
trace's start, the arrays the ops read that were there before (torch's pre-existing memory).
"""

from __future__ import annotations

import json
import time
from time import perf_counter_ns

_ROW = 9              # torch's row: an unused slot, then 7 categories and "uncategorized"
_UNCATEGORIZED = 8


def memory_timeline(rec, device: str | None = None) -> tuple[list, list]:
    """(times in epoch microseconds, rows of bytes by category) for `device` ("cpu" unless
    given; "cuda" means "cuda:0")."""
    device = _device_name(device)
    epoch_offset = time.time_ns() - perf_counter_ns()
    times: list = []
    sizes: list = []
    for t, nbytes, where in sorted(rec.allocations, key=lambda a: a[0]):
        if where != device:
            continue
        t = (t + epoch_offset) // 1000
        if not times or t != times[-1]:
            times.append(t)
            sizes.append(sizes[-1].copy() if sizes else [0] * _ROW)
        sizes[-1][_UNCATEGORIZED] += nbytes
    return times, sizes


def write_memory_timeline(rec, path: str, device: str | None = None) -> None:
    """Write `memory_timeline` to `path` as JSON; torch's .html and .gz forms are refused."""
    if path.endswith((".html", ".gz")):
        raise NotImplementedError(f"export_memory_timeline({path!r}): kiln writes the JSON "
                                  "form only; give a path ending in .json")
    times, sizes = memory_timeline(rec, device)
    with open(path, "w") as f:
        json.dump([times, sizes], f)


def _device_name(device: str | None) -> str:
    name = "cpu" if device is None else str(device)
    if name == "cuda":
        name = "cuda:0"
    if name != "cpu" and not name.startswith("cuda:"):
        raise ValueError(f"export_memory_timeline(device={device!r}): expected 'cpu', 'cuda' "
                         "or 'cuda:N'")
    return name
