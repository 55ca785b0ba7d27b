"""Eager softmax and log_softmax on CuPy arrays: one Triton kernel launch forward, one backward.

The kernels are `kiln.codegen.softmax_triton`'s. For each shape, layout and dtype the kernel is
rendered and its launcher (`CudaKernelLauncher`, which prepares its arguments once) made on
first use, then reused, so a call costs the host one table lookup, the output's allocation and
the launch; a launcher keeps its last call's arguments, so each thread has its own (as in
`kiln.runtime.cupy_backend`). An array is read in place when its dimensions before and
after the softmax dimension each merge into one stride and its elements fill the memory they
span (C order, a transpose that keeps those dimensions apart); another layout (a slice, a
broadcast gradient) is copied to C order first.
"""

from __future__ import annotations

import threading

from kiln.codegen.softmax_triton import DTYPES, render_softmax_kernel
from kiln.ir import dtypes as dt
from kiln.runtime.triton_launch import CudaKernelLauncher

_INT32 = 2 ** 31 - 1      # the kernels index with 32-bit integers
_BY_NUMPY = {d.np_dtype: d for d in DTYPES}

# (kind, backward, dim, thread, (shape, strides, dtype) per array) -> (launcher, the arrays
# to copy first or None); a shape that keeps changing makes new entries, so the table is
# emptied past a limit
_LAUNCHERS: dict = {}
_LAUNCHERS_LIMIT = 1024


def supported(array, dtype: dt.DType) -> bool:
    """Whether the kernels take this CuPy array of kiln dtype `dtype`: float16/32/64, of at
    least one dimension, not empty, within 32-bit indexing."""
    return dtype in DTYPES and array.ndim > 0 and 0 < array.size <= _INT32


def _merged(shape: tuple, strides: tuple) -> int | None:
    """The one element stride of dimensions `shape` (with element `strides`) read as one, or
    None when they do not merge; 0 for no dimensions (or only length-1 ones)."""
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if not dims:
        return 0
    for (_, outer), (n, inner) in zip(dims, dims[1:]):
        if outer != inner * n:
            return None
    return dims[-1][1]


def _fills_span(shape: tuple, strides: tuple) -> bool:
    """Whether elements of these element strides fill exactly the memory they span: C order
    or a permutation of it (a launch hands over that span, and the kernel reads only it)."""
    expect = 1
    for s, n in sorted((s, n) for s, n in zip(strides, shape) if n > 1):
        if s != expect:
            return False
        expect *= n
    return True


def _row_strides(a, d: int) -> tuple | None:
    """`a`'s element strides (outer, R, inner) around dimension `d`, or None when its layout
    has no such view, or its elements do not fill their span (a slice, a broadcast)."""
    item = a.itemsize
    if any(s < 0 or s % item for s in a.strides):
        return None
    strides = [s // item for s in a.strides]
    shape = a.shape
    if not (a.flags.c_contiguous or _fills_span(shape, strides)):
        return None
    outer = _merged(shape[:d], strides[:d])
    inner = _merged(shape[d + 1:], strides[d + 1:])
    if outer is None or inner is None:
        return None
    return (outer, strides[d], inner)


def _rows(shape: tuple, d: int) -> tuple:
    outer = inner = 1
    for n in shape[:d]:
        outer *= n
    for n in shape[d + 1:]:
        inner *= n
    return (outer, shape[d], inner)


def _prepare(kind: str, backward: bool, arrays: tuple, d: int) -> tuple:
    """(launcher, which arrays to copy to C order first) for arrays of these layouts."""
    copies, strides = [], []
    for a in arrays:
        s = _row_strides(a, d)
        copies.append(s is None)
        _, r, inner = _rows(a.shape, d)
        strides.append(s if s is not None else (r * inner, inner, 1))    # its C-order copy's
    shape = arrays[0].shape
    launcher = CudaKernelLauncher(render_softmax_kernel(
        kind, backward, _rows(shape, d), tuple(strides), _BY_NUMPY[arrays[0].dtype]),
        tune=False)
    return launcher, tuple(copies) if any(copies) else None


def _launch(xp, kind: str, backward: bool, arrays: tuple, d: int):
    """Run the kernel on `arrays` (inputs of one shape and dtype): its new C-order output."""
    # one lookup per call once a layout has been seen: the layouts and the thread (a launcher
    # keeps its last call's arguments, so each thread has its own)
    key = (kind, backward, d, threading.get_ident()) + tuple(
        [(a.shape, a.strides, a.dtype) for a in arrays])
    entry = _LAUNCHERS.get(key)
    if entry is None:
        entry = _prepare(kind, backward, arrays, d)
        if len(_LAUNCHERS) >= _LAUNCHERS_LIMIT:
            _LAUNCHERS.clear()
        _LAUNCHERS[key] = entry
    launcher, copies = entry
    if copies is not None:
        arrays = [xp.ascontiguousarray(a) if c else a for a, c in zip(arrays, copies)]
    out = xp.empty(arrays[0].shape, arrays[0].dtype)
    launcher(list(arrays), [out])
    return out


def softmax_forward(xp, x, d: int, kind: str = "softmax"):
    """softmax (or log_softmax, `kind`) of CuPy array `x` along dimension `d`, in one launch:
    a new C-contiguous array of x's shape and dtype (see `supported`)."""
    return _launch(xp, kind, False, (x,), d)


def softmax_backward(xp, g, y, d: int, kind: str = "softmax"):
    """The gradient of softmax (or log_softmax, `kind`) along dimension `d` from the output
    gradient `g` and the output `y` (arrays of one shape and dtype), in one launch."""
    return _launch(xp, kind, True, (g, y), d)


__all__ = ["softmax_backward", "softmax_forward", "supported"]
