"""`torch.__config__`: what this kiln runs on (`show()`) and its threads (`parallel_info()`),
as text, for bug reports and tuning guides that print them."""

from __future__ import annotations

import platform


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:           # not installed, or broken: say so rather than fail
        return "not available"


def show() -> str:
    """The libraries kiln computes with, and their versions."""
    import kiln
    lines = [f"kiln {kiln.__version__} built with:",
             f"  - Python {platform.python_version()} ({platform.machine()})",
             f"  - NumPy {_version('numpy')} (CPU arrays, eager ops)",
             f"  - Triton {_version('triton')} (GPU kernels, kernel interpreter)",
             f"  - CuPy {_version('cupy')} (GPU arrays)",
             "  - C kernels compiled at run time by the system's C compiler (CPU programs)"]
    return "\n".join(lines) + "\n"


def parallel_info() -> str:
    """The threads kiln's compiled CPU kernels use."""
    import os

    import kiln
    return ("kiln/Parallel:\n"
            f"\tkiln.get_num_threads() : {kiln.get_num_threads()}\n"
            f"\tos.cpu_count() : {os.cpu_count()}\n")
