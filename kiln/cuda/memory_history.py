"""torch.cuda.memory's allocation history: `_record_memory_history`, `_snapshot`,
`_dump_snapshot` (the pickle pytorch.org/memory_viz reads) and `memory_snapshot`.

kiln listens to CuPy's memory pool through a `cupy.cuda.MemoryHook`: each pool `malloc` becomes
an "alloc" trace entry (address, size, the user's Python frames), each return to the pool a
"free_requested" and a "free_completed", each cudaMalloc of the pool a "segment_alloc". The
snapshot has torch's structure: `segments` (what the pool took from the driver while recording,
with the blocks still allocated in it) and `device_traces` (one list of entries per device).

What differs from torch: CuPy's hooks are per thread, so what is recorded is the memory
allocated and freed on the thread that called `_record_memory_history`; segments the pool held
before recording began are not listed (call `kiln.cuda.empty_cache()` first to see them all);
`context` and `stacks` accept torch's values but kiln records Python frames only ("python" and
"all" mean the same), at allocation.
"""

from __future__ import annotations

import collections
import pickle
import sys

_STATE: dict = {"hook": None, "entered": False}   # the last hook, and whether it listens


def _frames() -> list:
    """The user's Python frames at an allocation, innermost first, as torch's Frame dicts."""
    from kiln.profiler.memory import _KILN_DIR
    frames = []
    f = sys._getframe(2)
    while f is not None:
        code = f.f_code
        if not code.co_filename.startswith(_KILN_DIR):
            frames.append({"filename": code.co_filename, "line": f.f_lineno,
                           "name": code.co_name})
        f = f.f_back
    return frames


def _make_hook(cp, max_entries: int, with_frames: bool):
    """A MemoryHook (CuPy's class, so defined once CuPy is loaded) keeping torch's trace."""

    class HistoryHook(cp.cuda.MemoryHook):
        name = "kiln.cuda.memory._record_memory_history"

        def __init__(self):
            self.traces: dict = collections.defaultdict(
                lambda: collections.deque(maxlen=max_entries))
            self.blocks: dict = {}       # (device, address) -> Block dict, while allocated
            self.segments: dict = {}     # (device, address) -> total size, cudaMalloc'd

        def _entry(self, device: int, action: str, addr: int, size: int, frames) -> None:
            self.traces[device].append({"action": action, "addr": addr, "size": size,
                                        "stream": 0, "frames": frames})

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id, **kw):
            if not mem_ptr:
                return
            frames = _frames() if with_frames else []
            self.blocks[(device_id, mem_ptr)] = {
                "address": mem_ptr, "size": mem_size, "requested_size": size,
                "state": "active_allocated", "frames": frames}
            self._entry(device_id, "alloc", mem_ptr, mem_size, frames)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id, **kw):
            block = self.blocks.pop((device_id, mem_ptr), None)
            frames = block["frames"] if block is not None else []
            self._entry(device_id, "free_requested", mem_ptr, mem_size, frames)
            self._entry(device_id, "free_completed", mem_ptr, mem_size, frames)

        def alloc_postprocess(self, device_id, mem_size, mem_ptr, **kw):
            if mem_ptr:
                self.segments[(device_id, mem_ptr)] = mem_size
                self._entry(device_id, "segment_alloc", mem_ptr, mem_size, [])

    return HistoryHook()


def _record_memory_history(enabled: str | None = "all", context: str | None = "all",
                           stacks: str = "all", max_entries: int = sys.maxsize,
                           device=None, clear_history: bool = False, **options) -> None:
    """Start recording the pool's allocations and frees on this thread (`enabled=None` stops,
    keeping what was recorded for `_snapshot`). `max_entries` caps each device's trace,
    keeping the newest; `stacks="all"` or "python" keep the user's frames at each allocation
    (kiln has no C++ frames), `context=None` keeps none."""
    from kiln.cuda import _require
    cp = _require("memory._record_memory_history")
    if enabled not in (None, False, "all", "state"):
        raise ValueError(f"_record_memory_history(enabled={enabled!r}): expected None, 'state' "
                         "or 'all'")
    if stacks not in ("all", "python"):
        raise ValueError(f"_record_memory_history(stacks={stacks!r}): expected 'python' or "
                         "'all'")
    old = _STATE["hook"]
    if _STATE["entered"]:
        old.__exit__(None, None, None)
        _STATE["entered"] = False
    if not enabled:
        return
    if max_entries < 1:
        raise ValueError(f"_record_memory_history(max_entries={max_entries}): expected at "
                         "least 1")
    hook = _make_hook(cp, int(max_entries), context is not None)
    if old is not None and not clear_history:
        hook.blocks = old.blocks
        hook.segments = old.segments
    hook.__enter__()
    _STATE["hook"], _STATE["entered"] = hook, True


def _snapshot(device=None, augment_with_fx_traces: bool = False) -> dict:
    """The recorded state as torch's dict: `segments` and `device_traces`."""
    from kiln.cuda import _require, device_count
    _require("memory._snapshot")
    hook = _STATE["hook"]
    traces = [list(hook.traces.get(d, ())) if hook is not None else []
              for d in range(device_count())]
    return {"segments": _segments(hook), "device_traces": traces}


def _segments(hook) -> list:
    """Each segment the pool cudaMalloc'd while recording, with the blocks allocated in it."""
    if hook is None:
        return []
    out = []
    for (device, address), total in sorted(hook.segments.items()):
        blocks = [dict(b) for (d, a), b in sorted(hook.blocks.items())
                  if d == device and address <= a < address + total]
        used = sum(b["size"] for b in blocks)
        out.append({"device": device, "address": address, "total_size": total, "stream": 0,
                    "segment_type": "large" if total > 2 ** 20 else "small",
                    "allocated_size": used, "active_size": used, "blocks": blocks})
    return out


def _dump_snapshot(filename: str = "dump_snapshot.pickle",
                   augment_with_fx_traces: bool = False) -> None:
    """Pickle `_snapshot()` to `filename`, for pytorch.org/memory_viz."""
    snapshot = _snapshot()
    with open(filename, "wb") as f:
        pickle.dump(snapshot, f)


def memory_snapshot(mempool_id=None, include_traces: bool = True) -> list:
    """The segments of `_snapshot()` (torch.cuda.memory_snapshot)."""
    if mempool_id is not None:
        raise NotImplementedError("memory_snapshot(mempool_id=...): kiln records the default "
                                  "pool's history only")
    return _snapshot()["segments"]
