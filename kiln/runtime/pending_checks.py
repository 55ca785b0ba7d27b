"""Index bounds checks of eager ops on a GPU, kept on the device until the host next reads it.

Reading a check's result on the host (`bool(idx.max() >= n)`) makes the host wait for every
kernel queued before it, so an eager step with one cannot run ahead of the GPU. Instead, an op
that indexes by a tensor's values on a GPU queues its index's minimum and maximum here, still on
the device (two reductions, no transfer), with what to say if they are out of range; the
checks are read, all in one transfer per device, at the next point where the host reads device
memory anyway (`Tensor.item()`, `.tolist()`, `.numpy()`, `.cpu()`, `bool(t)`, printing,
`kiln.cuda.synchronize()`), and at the latest once `MAX_PENDING` checks are queued. A bad index
then raises its op's error (`IndexError` naming the op, the value, the dimension and the line
that called the op) at that read.

What ran between the bad index and the read has run: CuPy's `take` wraps an out-of-range index
around (its values are those of some other row), so values computed after it may be garbage,
which the read never returns, since it raises instead. PyTorch reports a bad index on CUDA
asynchronously too, and its CUDA context is then unusable; kiln's stays usable, and the
checks queued after the bad one are dropped with it. On the CPU every check is made at once.

Checks are per thread, as the ops that queue them are.

Inside a CUDA graph capture (`kiln.cuda.graph`) nothing may be read: the checks an op queues
there are kept by the graph (`begin_capture`/`end_capture`), which folds each into a running
minimum and maximum on the device (`GraphCheck`, part of the graph) and queues that after each
replay, so an index that is out of range in any replay is reported at the next read.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from typing import NamedTuple

import numpy as np

from kiln.runtime.device import cupy_module

# Checks queued before one host read is forced to look at them: a bound on the memory they hold
# (two 0-d device arrays each) and on how late an error is reported.
MAX_PENDING = 128


class PendingCheck(NamedTuple):
    """One queued bounds check: every value of an index lies in [lowest, size)."""

    low: object           # the index's minimum, a 0-d device array
    high: object          # and its maximum
    lowest: int
    size: int
    op: str               # the op the user called
    kind: type            # the exception to raise
    message: str          # what went wrong, with `{}` where the offending value goes
    where: str            # the user's `file:line` that called the op
    inclusive: bool = False   # `high <= size` (a closed range of values: probabilities)


class _Queue(threading.local):
    def __init__(self):
        self.checks = []
        self.capturing = False    # a CUDA graph captures: queue without ever reading


_QUEUE = _Queue()


def defer(low, high, lowest, size, op: str, kind: type, message: str, where: str,
          inclusive: bool = False) -> None:
    """Queue the check that `lowest <= low` and `high < size` (`high <= size` if `inclusive`;
    0-d device arrays: an index's minimum and maximum); when `MAX_PENDING` are queued, read
    them all now. A NaN fails the check."""
    checks = _QUEUE.checks
    checks.append(PendingCheck(low, high, lowest, size, op, kind, message, where, inclusive))
    if len(checks) >= MAX_PENDING and not _QUEUE.capturing:
        flush()


# torch.cuda.set_sync_debug_mode: 0 says nothing, 1 warns, 2 raises at each read of device
# memory on the host (`host_read`)
_SYNC_DEBUG = [0]


def set_sync_debug_mode(mode: int) -> None:
    _SYNC_DEBUG[0] = mode


def get_sync_debug_mode() -> int:
    return _SYNC_DEBUG[0]


def host_read(what: str) -> None:
    """The host is about to read device memory (`what`: `item()`, a copy to the CPU, ...),
    waiting for the GPU: read the queued checks first, and warn or raise as the sync debug
    mode says."""
    mode = _SYNC_DEBUG[0]
    if mode:
        message = f"called a synchronizing CUDA operation ({what})"
        if mode >= 2:
            raise RuntimeError(message)
        warnings.warn(message, stacklevel=3)
    flush()


def pending() -> int:
    """How many checks this thread has queued and not read yet."""
    return len(_QUEUE.checks)


def flush() -> None:
    """Read every queued check (one transfer per device) and raise the first that failed."""
    checks = _QUEUE.checks
    if not checks:
        return
    _QUEUE.checks = []
    cp = cupy_module()
    by_device: dict = {}
    for c in checks:
        by_device.setdefault(c.low.device.id, []).append(c)
    values = {}
    for device, group in by_device.items():
        with cp.cuda.Device(device):
            host = cp.stack([v for c in group for v in (c.low, c.high)]).get().tolist()
        for i, c in enumerate(group):
            values[id(c)] = host[2 * i], host[2 * i + 1]
    for c in checks:                # a graph's running extremes start over after each read
        graph_check = _GRAPH_CHECKS.get(id(c))
        if graph_check is not None and graph_check.pending is c:
            graph_check.reset()
    failed = [c for c in checks if not _in_range(c, *values[id(c)])]
    if failed:
        raise _error(failed[0], *values[id(failed[0])])


def begin_capture() -> None:
    """A CUDA graph starts capturing on this thread: read what is queued (the last read before
    the capture), then queue without reading until `end_capture`."""
    flush()
    _QUEUE.capturing = True


def capturing() -> bool:
    """Whether a CUDA graph (kiln.cuda.graph) is capturing on this thread."""
    return _QUEUE.capturing


def end_capture() -> list:
    """The capture ended: the checks queued during it, taken off the queue (their arrays hold
    what one replay computes, not yet anything)."""
    checks, _QUEUE.checks, _QUEUE.capturing = _QUEUE.checks, [], False
    return checks


_GRAPH_CHECKS: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


class GraphCheck:
    """A check captured in a CUDA graph, made to span every replay: the graph also folds the
    index's minimum and maximum into running extremes `low` and `high` (`fold`, captured with
    the rest; `reset` after the capture starts them off), and `queue()` after each replay puts
    the check on this thread's queue unless it is there already. A bad index in any replay
    since the last read keeps its value in `low` or `high` until the next."""

    def __init__(self, check: PendingCheck, xp):
        self.check = check
        self.low = xp.empty((), check.low.dtype)
        self.high = xp.empty((), check.high.dtype)
        self.pending = check._replace(low=self.low, high=self.high)
        _GRAPH_CHECKS[id(self.pending)] = self

    def fold(self, xp) -> None:
        """Queue, on the capturing stream, the fold of this replay's extremes into the running
        ones (NaN stays NaN: it fails the check)."""
        xp.minimum(self.low, self.check.low, out=self.low)
        xp.maximum(self.high, self.check.high, out=self.high)

    def reset(self) -> None:
        """Start the running extremes off (after the capture, and after each read, on the
        current stream)."""
        dtype = self.low.dtype
        if dtype.kind == "f":
            self.low.fill(float("inf"))
            self.high.fill(float("-inf"))
        else:
            info = np.iinfo(dtype)
            self.low.fill(info.max)
            self.high.fill(info.min)

    def queue(self) -> None:
        checks = _QUEUE.checks
        if not any(c is self.pending for c in checks):
            checks.append(self.pending)
            if len(checks) >= MAX_PENDING and not _QUEUE.capturing:
                flush()


def discard() -> None:
    """Forget this thread's queued checks without reading them."""
    _QUEUE.checks = []


def _in_range(check: PendingCheck, low, high) -> bool:
    return check.lowest <= low and (high <= check.size if check.inclusive else high < check.size)


def _error(check: PendingCheck, low: int, high: int) -> Exception:
    bad = low if not check.lowest <= low else high
    return check.kind(
        f"{check.op}: {check.message.format(bad)} (at {check.where}; checked on the GPU "
        f"without stopping it and reported at this read of device memory: values computed "
        f"after that op may be wrong)")
