"""`torch.cuda.nccl`: which NCCL the GPU collectives use (CuPy's `cupy.cuda.nccl` bindings)."""

from __future__ import annotations

import importlib


def _nccl():
    try:
        return importlib.import_module("cupy.cuda.nccl")
    except (ImportError, RuntimeError) as e:
        raise RuntimeError("torch.cuda.nccl: NCCL is not available to kiln (it uses CuPy's "
                           "cupy.cuda.nccl, which needs CuPy with NCCL on a CUDA machine: "
                           f"pip install nvidia-nccl-cu12); {type(e).__name__}: {e}") from None


def is_available(tensors=None) -> bool:
    try:
        _nccl()
    except RuntimeError:
        return False
    return True


def version() -> tuple:
    """NCCL's version as (major, minor, patch), as torch.cuda.nccl.version() gives it."""
    code = int(_nccl().get_version())
    # NCCL_VERSION_CODE: major*10000 + minor*100 + patch since 2.9, major*1000 + ... before
    if code >= 20900:
        return code // 10000, code % 10000 // 100, code % 100
    return code // 1000, code % 1000 // 100, code % 100
