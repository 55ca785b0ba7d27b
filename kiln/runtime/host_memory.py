"""Keeps freed host memory in the process, so an eager step's large temporaries do not fault.

An eager convolution step allocates and frees arrays of megabytes each time (the unfolded
windows, their gradient). glibc's malloc gives such memory back to the system once more than
about twice the last large block is free at the top of its heap, and the next step then takes a
page fault for every 4 KiB it touches again: on the 28x28 CNN at batch 16 that was ~4,000
faults and ~10 ms of system time per ~35 ms step. Raising the trim threshold keeps the memory for
the next step. Blocks over 32 MiB (the largest mmap threshold glibc allows; at batch 64 the
unfolded windows are 42 MB) would still be mapped and unmapped per call, and NumPy's huge pages
make the kernel zero 2 MiB per fault, so large blocks come from the heap too (no mmap). The
price: memory freed in the middle of the heap stays with the process for reuse, as in a caching
allocator, rather than going back to the system.

Only with glibc, and not when the user tuned malloc through its environment variables
(`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_MMAP_MAX_`, `MALLOC_TOP_PAD_`) or set
`KILN_KEEP_FREED_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRIM_THRESHOLD = 256 << 20      # freed memory the heap keeps at its top before returning it

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; whether it was done (once)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("KILN_KEEP_FREED_MEMORY", "1") == "0" or any(
            k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                      "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version           # noqa: B018  (glibc only: musl, macOS differ)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
