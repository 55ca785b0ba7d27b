"""`kiln.set_num_threads` / `get_num_threads`: the thread count of the BLAS library NumPy calls
and of the compiled C kernels (OpenMP)."""

from __future__ import annotations

import os

# threadpoolctl applies a limit when constructed and keeps it until restored; hold the handle.
_limit = None


def set_num_threads(n: int) -> None:
    """Use at most `n` threads for matmuls and compiled kernels on the CPU, as
    `torch.set_num_threads` does.

    kiln's eager matmuls are small and many; on a busy machine a multi-threaded BLAS spends
    more time waking threads than multiplying, so one or two threads is often fastest.
    """
    global _limit
    if int(n) < 1:
        raise ValueError(f"set_num_threads: the number of threads must be positive, got {n}")
    from kiln.runtime import c_build
    c_build.set_num_threads(int(n))            # compiled C kernels: OpenMP's team size
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as err:
        raise RuntimeError("kiln.set_num_threads needs threadpoolctl (pip install threadpoolctl, "
                           "scikit-learn ships it); or set OPENBLAS_NUM_THREADS / "
                           "OMP_NUM_THREADS before starting Python") from err
    _limit = threadpool_limits(limits=int(n), user_api="blas")


def get_num_threads() -> int:
    """The number of threads NumPy's BLAS uses (the CPU count if threadpoolctl is missing)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return min(counts) if counts else 1
