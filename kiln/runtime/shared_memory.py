"""CPU arrays in shared memory: a memfd segment mapped into this process, which other processes
map too once they are handed its file descriptor (kiln.multiprocessing passes it through
multiprocessing's fd sharing). The memory lives as long as some process maps it or holds the
descriptor; nothing is left behind in /dev/shm when processes die.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref

import numpy as np


class Segment(mmap.mmap):
    """A shared mapping that remembers its file descriptor (to hand to other processes)."""

    fd: int
    size: int


def _anonymous_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("kiln-tensor", 0)
    else:       # no memfd (macOS): an unlinked file in the shared-memory directory
        where = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="kiln-tensor-", dir=where)
        os.unlink(path)
    os.ftruncate(fd, max(size, 1))
    return fd


def attach(fd: int, size: int) -> Segment:
    """Map the segment behind `fd` (this module owns `fd` from now on)."""
    seg = Segment(fd, max(size, 1))
    seg.fd, seg.size = fd, size
    weakref.finalize(seg, os.close, fd)
    return seg


def shared_copy(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `array` in a new shared segment."""
    seg = attach(_anonymous_fd(array.nbytes), array.nbytes)
    out = np.ndarray(array.shape, array.dtype, buffer=seg)
    out[...] = array
    return out


def segment_of(array) -> Segment | None:
    """The shared segment `array` lives in, or None."""
    base = array
    while base is not None and not isinstance(base, Segment):
        base = getattr(base, "base", None)
    return base


def handle(array: np.ndarray) -> tuple[Segment, int, tuple, tuple, str]:
    """(segment, byte offset, shape, strides, dtype) of a shared array: enough to rebuild it."""
    seg = segment_of(array)
    start = np.frombuffer(seg, dtype=np.uint8, count=0).__array_interface__["data"][0]
    offset = array.__array_interface__["data"][0] - start
    return seg, offset, array.shape, array.strides, array.dtype.str


def rebuild(seg: Segment, offset: int, shape: tuple, strides: tuple, dtype: str) -> np.ndarray:
    return np.ndarray(shape, np.dtype(dtype), buffer=seg, offset=offset, strides=strides)
