"""Keeps freed host memory in the process, so an eager step's large temporaries do not fault.

An eager convolution step allocates and frees arrays of megabytes each time (the unfolded
windows, their gradient). glibc's malloc gives such memory back to the system once more than
about twice the last large block is free at the top of its heap, and the next step then takes a
page fault for every 4 KiB it touches again: on the 28x28 CNN at batch 16 that was ~4,000
faults and ~10 ms of system time per ~35 ms step. Raising the trim threshold keeps the memory for
the next step. Setting it turns off glibc's moving mmap threshold, so that is pinned at its
largest dynamic value (blocks above it are mapped and unmapped per call, as before).

Only with glibc, and not when the user tuned malloc through its environment variables
(`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TOP_PAD_`) or set
`KILN_KEEP_FREED_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD = 256 << 20      # freed memory the heap keeps before returning it to the system
MMAP_THRESHOLD = 32 << 20       # glibc's own ceiling for its dynamic threshold (64-bit)

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; whether it was done (once)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("KILN_KEEP_FREED_MEMORY", "1") == "0" or any(
            k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                      "MALLOC_TOP_PAD_")):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version           # noqa: B018  (glibc only: musl, macOS differ)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
