"""What `profile(profile_memory=True)` and `with_stack=True` record beside op times: the bytes an
op's result newly holds, when those bytes are freed, and the user's Python stack at each op.

Allocations: kiln sees an op's result, not the temporaries inside it. After each dispatched op
the result's array is followed down `.base` to the array that owns its memory; if that owner is
neither an input's owner nor counted already, the op allocated its `nbytes` (CPU memory for a
NumPy array, device memory for a CuPy one). A view (reshape, transpose, a slice) shares an
input's owner and allocates nothing.

Frees: a weak reference on each counted owner reports its bytes, negative, when the array is
reclaimed: to the range open on the thread that drops it (its self memory), or, with none open,
as a "[memory]" event, as torch reports a free outside any op. Nothing of this runs unless a
profile asked for memory: the recorder's plain wrapper does not call it.
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from time import perf_counter_ns

from kiln.tracer.tensor import Tensor

MEMORY = "cpu_instant_event"     # category of a free outside any range (torch's "[memory]")
MEMORY_NAME = "[memory]"
_KILN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _owner(array):
    """The array that owns `array`'s memory (itself when it is not a view)."""
    base = getattr(array, "base", None)
    while base is not None and hasattr(base, "nbytes"):
        array, base = base, getattr(base, "base", None)
    return array


def count_result(rec, frame: list, args, out, now: int) -> None:
    """Add the bytes `out` (a tensor or a tuple of them) newly holds to the op's `frame`, and
    watch each new owner for its free. An input's owner not seen before was there when the
    trace began (torch's "pre-existing" memory): it enters the timeline at the trace's start,
    and its free is reported too."""
    results = out if isinstance(out, (tuple, list)) else (out,)
    inputs = set()
    for a in args:
        if isinstance(a, Tensor) and a.device.type != "meta":
            owner = _owner(a._data)
            inputs.add(id(owner))
            if id(owner) not in rec.tracked and _watch(rec, owner, a.device):
                rec.allocations.append((rec.origin_ns, int(owner.nbytes), str(a.device)))
    for t in results:
        if not isinstance(t, Tensor) or t.device.type == "meta":
            continue
        owner = _owner(t._data)
        if id(owner) in inputs or id(owner) in rec.tracked or not _watch(rec, owner, t.device):
            continue
        nbytes = int(owner.nbytes)
        frame[1 if t.device.type == "cpu" else 3] += nbytes
        rec.allocations.append((now, nbytes, str(t.device)))


def _watch(rec, owner, device) -> bool:
    """Watch `owner` for its free; False when it holds no bytes. An owner that refuses weak
    references (a NumPy scalar) is counted without its free."""
    nbytes = int(getattr(owner, "nbytes", 0))
    if not nbytes:
        return False
    key = id(owner)
    try:
        rec.tracked[key] = weakref.ref(owner, functools.partial(
            _freed, rec, key, nbytes, device.type != "cpu", str(device)))
    except TypeError:
        pass
    return True


def _freed(rec, key: int, nbytes: int, on_device: bool, device: str, ref) -> None:
    """A counted array was reclaimed: its bytes go, negative, to the range open on this thread
    (or to a "[memory]" event)."""
    if rec.tracked.get(key) is ref:
        del rec.tracked[key]
    if not rec.active:
        return
    now = perf_counter_ns()
    rec.allocations.append((now, -nbytes, device))
    stack = rec.thread_stack()
    if stack and len(stack[-1]) == 5:
        stack[-1][3 if on_device else 1] -= nbytes
        return
    cpu, dev = (0, -nbytes) if on_device else (-nbytes, 0)
    rec.events.append((MEMORY_NAME, MEMORY, now, now, 0, () if rec.record_shapes else None,
                       rec.local.tid, cpu, cpu, dev, dev, None))


def close_frame(frame: list, stack: list) -> tuple:
    """A closing range's (self CPU bytes, total CPU bytes, self device bytes, total device
    bytes); its totals go to the range that encloses it."""
    cpu_total, dev_total = frame[1] + frame[2], frame[3] + frame[4]
    if stack and len(stack[-1]) == 5:
        stack[-1][2] += cpu_total
        stack[-1][4] += dev_total
    return frame[1], cpu_total, frame[3], dev_total


@functools.lru_cache(maxsize=1024)
def _short(path: str) -> str:
    """`path` relative to the longest sys.path entry holding it, as torch prints frames."""
    best = ""
    for entry in sys.path:
        entry = os.path.join(os.path.abspath(entry or "."), "")
        if path.startswith(entry) and len(entry) > len(best):
            best = entry
    return path[len(best):]


def user_stack() -> list:
    """The calling Python frames outside kiln, innermost first, as "file.py(line): function"
    (the line running now)."""
    frames = []
    f = sys._getframe(1)
    while f is not None:
        code = f.f_code
        if not code.co_filename.startswith(_KILN_DIR):
            frames.append(f"{_short(code.co_filename)}({f.f_lineno}): {code.co_name}")
        f = f.f_back
    return frames
