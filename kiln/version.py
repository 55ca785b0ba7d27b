"""`kiln.version`: torch.version's fields, for scripts that print or branch on them.

`cuda` is the CUDA runtime CuPy runs on ("12.8"), or None without a usable GPU (as a CPU-only
torch build gives None); kiln is not built per CUDA version, so there is nothing else to name.
"""

from __future__ import annotations

__version__ = "0.1.0"       # kiln.__version__ (tests/test_import_surface.py: equal)
debug = False
git_version = None          # kiln is installed from source, not from a tagged build
hip = None
rocm = None
xpu = None

__all__ = ["__version__", "cuda", "debug", "git_version", "hip", "rocm", "xpu"]


def _cuda_version() -> str | None:
    from kiln.runtime.device import cuda_is_available, cupy_module
    if not cuda_is_available():
        return None
    code = int(cupy_module().cuda.runtime.runtimeGetVersion())     # 12080 for 12.8
    return f"{code // 1000}.{code % 1000 // 10}"


def __getattr__(name: str):
    if name == "cuda":          # looked up on use: asking CuPy for the runtime starts CUDA
        return _cuda_version()
    raise AttributeError(f"module 'kiln.version' has no attribute {name!r}")
