"""A C kernel for `index_add` on the CPU (an embedding's gradient), run by the NumPy backend.

The primitive's definition (`kiln.ir.ops`) adds with `np.add.at`, which walks its index through
NumPy's generic fancy-indexing iterator: ~0.5 ms for the (700, 64) rows an embedding of a
35x20-token batch scatters back into its (1000, 64) table, where the adds themselves take a few
microseconds. The kernel here adds the same values in the same order (for each position along
the axis in turn, its row of `src` into the row of the result it names, so a row named twice
gets its first contribution first, as in `np.add.at`): the result is bit-identical, and which
route ran never shows in the values.

The kernel builds once per machine with the system C compiler (`c_build`, cached on disk), on
first use. It declines (returns None) for dtypes other than float32/float64 and int64/int32
indices, and without a working compiler; an index out of range also makes it decline, so the
NumPy route raises its usual IndexError.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np

from kiln.runtime.c_helpers import HelperKernels

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* out (outer, size, inner) += src (outer, n, inner) at the positions idx (n) names along the
   middle dim, position by position; returns 0, or 1 (nothing written) when an index is outside
   [-size, size). */
#define KILN_INDEX_ADD(NAME, T, I)                                                           \
int NAME(T *out, const I *idx, const T *src, long outer, long size, long n, long inner) {   \
    for (long i = 0; i < n; i++)                                                             \
        if (idx[i] < -size || idx[i] >= size) return 1;                                      \
    for (long p = 0; p < outer; p++)                                                         \
        for (long i = 0; i < n; i++) {                                                       \
            long row = idx[i] < 0 ? idx[i] + size : idx[i];                                  \
            T *o = out + (p * size + row) * inner;                                           \
            const T *s = src + (p * n + i) * inner;                                          \
            for (long q = 0; q < inner; q++) o[q] += s[q];                                   \
        }                                                                                    \
    return 0;                                                                                \
}
KILN_INDEX_ADD(kiln_index_add_f32_i64, float, int64_t)
KILN_INDEX_ADD(kiln_index_add_f64_i64, double, int64_t)
KILN_INDEX_ADD(kiln_index_add_f32_i32, float, int32_t)
KILN_INDEX_ADD(kiln_index_add_f64_i32, double, int32_t)
"""

_TYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_INDEX_TYPES = {np.dtype(np.int64): "i64", np.dtype(np.int32): "i32"}


def _bind(lib) -> dict:
    fns = {}
    for dtype, t in _TYPES.items():
        for itype, i in _INDEX_TYPES.items():
            fn = getattr(lib, f"kiln_index_add_{t}_{i}")
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 4
            fn.restype = ctypes.c_int
            fns[dtype, itype] = fn
    return fns


# (value dtype, index dtype) -> C function, or None when the kernel cannot be built
_functions = HelperKernels(SOURCE, _bind).functions


def index_add_kernel(base: np.ndarray, idx: np.ndarray, src: np.ndarray,
                     axis: int) -> np.ndarray | None:
    """`index_add(base, idx, src, axis)` in C (a fresh array), or None to decline."""
    if not isinstance(base, np.ndarray) or not isinstance(src, np.ndarray) or \
            not isinstance(idx, np.ndarray):
        return None
    dtype = base.dtype
    if dtype not in _TYPES or src.dtype != dtype or idx.dtype not in _INDEX_TYPES or \
            base.ndim == 0:
        return None
    fns = _functions()
    if fns is None:
        return None
    out = np.array(base, order="C")             # a copy, C-contiguous
    src = np.ascontiguousarray(src)
    idx = np.ascontiguousarray(idx)
    outer = math.prod(base.shape[:axis])
    inner = math.prod(base.shape[axis + 1:])
    if fns[dtype, idx.dtype](out.ctypes.data, idx.ctypes.data, src.ctypes.data, outer,
                             base.shape[axis], idx.size, inner):
        return None                             # an index out of range: NumPy raises
    return out
