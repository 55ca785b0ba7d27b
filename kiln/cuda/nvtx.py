"""torch.cuda.nvtx on CuPy's NVTX bindings: named ranges that Nsight Systems shows on the
timeline (`with kiln.cuda.nvtx.range("forward"): ...`, or `range_push` / `range_pop`)."""

from __future__ import annotations

import contextlib

from kiln.runtime.device import cuda_is_available, cupy_module

__all__ = ["range_push", "range_pop", "range", "mark"]

_depth = [0]


def _nvtx():
    nvtx = getattr(cupy_module().cuda, "nvtx", None) if cuda_is_available() else None
    if nvtx is None:
        raise RuntimeError("NVTX functions not installed. Are you sure you have a CUDA build? "
                           "(kiln: no CUDA GPU, or CuPy without NVTX)")
    return nvtx


def range_push(msg: str) -> int:
    """Open a range named `msg`; returns the depth of the new range (0 for the outermost)."""
    _nvtx().RangePush(msg)
    _depth[0] += 1
    return _depth[0] - 1


def range_pop() -> int:
    """Close the innermost range; returns its depth, or -1 when none was open."""
    _nvtx().RangePop()
    if _depth[0] == 0:
        return -1
    _depth[0] -= 1
    return _depth[0]


def mark(msg: str) -> None:
    """An instant event named `msg`."""
    _nvtx().Mark(msg)


@contextlib.contextmanager
def range(msg: str, *args, **kwargs):      # noqa: A001  (torch's name)
    """A range around a `with` block; `msg` is formatted with args and kwargs."""
    range_push(msg.format(*args, **kwargs))
    try:
        yield
    finally:
        range_pop()
