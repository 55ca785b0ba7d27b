"""C kernels for the convolution primitives' NumPy work (unfold, fold), run by the NumPy backend.

A convolution's input gradient ends in `fold` (col2im): the windows of an (N, oh, ow, kh, kw, C)
gradient summed back into the (N, H, W, C) image. NumPy can only do that as kh*kw strided adds
that each read runs of C values (32 floats for a 3x3 conv of 32 channels), which costs several
times the memory traffic; the C kernel here streams through the windows once, adding each into
its image (which stays in cache), in the same order and precision as the NumPy routes (the
primitive's definition in `ir.ops` and the backend's), so its result is bit-identical and which
route ran never shows in the values. `unfold` (im2col) is a copy either way; the C kernel
copies each window row (kw pixels of C channels) with one memcpy, faster than NumPy's copy of
the strided view. Both run on `kiln.set_num_threads` threads.

The kernels build once per machine with the system C compiler (`c_build`, cached on disk), on
the first use. Without a working compiler, for dtypes and layouts the kernels do not take, and
in forked child processes (OpenMP's threads do not survive a fork), the kernels decline (return
None) and `kiln.runtime.numpy_backend` runs its NumPy code.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from kiln.ir.ops import windows_geometry
from kiln.runtime.c_helpers import HelperKernels

SOURCE = r"""
#include <string.h>

/* work smaller than this (bytes of windows) runs on the calling thread: waking the others
   costs more than it saves. `parallel` = 0 keeps any work there: a convolution's products
   (numpy_backend) unfold or fold a chunk between two BLAS calls, and OpenMP's threads waking
   (or spinning) beside BLAS's own threads there, dozens of times a step, cost more than the
   chunk's copy, on a busy machine many times more */
#define KILN_SERIAL_BYTES (256L << 10)

/* unfold (im2col) from a channels-last image (strides in bytes; a channel is `item` bytes and
   the channels of a pixel are adjacent): out[b, y, x, i, j, :] = image[b, y*sh + i*dh,
   x*sw + j*dw, :], one memcpy per window row when its pixels are adjacent too. */
void kiln_unfold(const char *image, char *out, long n, long oh, long ow, long kh, long kw,
                 long c, long item, long sh, long sw, long dh, long dw, long sn, long sy,
                 long sx, long parallel) {
    long run = c * item;
    long bytes = n * oh * ow * kh * kw * run;
    #pragma omp parallel for collapse(2) schedule(static) \
        if (parallel && bytes > KILN_SERIAL_BYTES)
    for (long b = 0; b < n; b++)
    for (long y = 0; y < oh; y++)
        for (long x = 0; x < ow; x++) {
            char *o = out + ((b * oh + y) * ow + x) * kh * kw * run;
            for (long i = 0; i < kh; i++) {
                const char *row = image + b * sn + (y * sh + i * dh) * sy + x * sw * sx;
                if (dw * sx == run) {
                    memcpy(o, row, kw * run);
                    o += kw * run;
                } else {
                    for (long j = 0; j < kw; j++, o += run)
                        memcpy(o, row + j * dw * sx, run);
                }
            }
        }
}

/* fold (col2im), channels-last: out[b, oy*sh + i*dh, ox*sw + j*dw, :] += cols[b, oy, ox, i, j, :]
   for every window, streaming through `cols` in memory order (an image's output, a few hundred
   KB, stays in cache while its windows are read once, front to back). A pixel thus sums its
   windows starting from zero in the order of their rows in `cols`, last window position
   first, as the NumPy route adds them. Images in parallel: each writes only its own pixels. */
#define KILN_FOLD(NAME, T)                                                                   \
void NAME(const T *cols, T *out, long n, long oh, long ow, long kh, long kw, long c,         \
          long h, long w, long sh, long sw, long dh, long dw, long parallel) {               \
    long bytes = n * oh * ow * kh * kw * c * (long)sizeof(T);                                \
    _Pragma("omp parallel for schedule(static) if (parallel && bytes > KILN_SERIAL_BYTES)")  \
    for (long b = 0; b < n; b++) {                                                           \
        T *image = out + b * h * w * c;                                                      \
        memset(image, 0, h * w * c * sizeof(T));                                             \
        const T *s = cols + b * oh * ow * kh * kw * c;                                       \
        for (long oy = 0; oy < oh; oy++)                                                     \
        for (long ox = 0; ox < ow; ox++)                                                     \
        for (long i = 0; i < kh; i++)                                                        \
        for (long j = 0; j < kw; j++, s += c) {                                              \
            T *o = image + ((oy * sh + i * dh) * w + ox * sw + j * dw) * c;                  \
            for (long k = 0; k < c; k++) o[k] += s[k];                                       \
        }                                                                                    \
    }                                                                                        \
}
KILN_FOLD(kiln_fold_f32, float)
KILN_FOLD(kiln_fold_f64, double)
"""

def _bind(lib) -> dict:
    fns = {}
    for name, nlongs in (("kiln_fold_f32", 13), ("kiln_fold_f64", 13), ("kiln_unfold", 15)):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long] * nlongs
        fn.restype = None
        fns[name] = fn
    return fns


# name -> C function, or None when there are none
_KERNELS = HelperKernels(SOURCE, _bind)
_functions = _KERNELS.functions


def fold_kernel(cols: np.ndarray, size: tuple, kernel: tuple, stride: tuple,
                dilation: tuple) -> np.ndarray | None:
    """`fold` in C: an (N, C, H, W) view of a channels-last result, or None to decline (a dtype
    other than float32/float64, windows not contiguous, or no C compiler)."""
    n, c = cols.shape[0], cols.shape[5]
    out = np.empty((n,) + tuple(size) + (c,), dtype=cols.dtype)
    if not fold_into(cols, out, stride, dilation):
        return None
    return out.transpose(0, 3, 1, 2)


def fold_into(cols: np.ndarray, out: np.ndarray, stride: tuple, dilation: tuple,
              parallel: bool = True) -> bool:
    """`fold` in C of (N, oh, ow, kh, kw, C) windows into `out`, a C-contiguous channels-last
    (N, H, W, C) array of their dtype (overwritten); False to decline, as `fold_kernel`.
    `parallel=False` runs it on the calling thread alone (between BLAS calls, see `SOURCE`)."""
    if cols.dtype not in _FOLD_NAMES or not cols.flags.c_contiguous or cols.size == 0 or \
            out.dtype != cols.dtype or not out.flags.c_contiguous:
        return False
    fns = _functions()
    if fns is None:
        return False
    n, oh, ow, kh, kw, c = cols.shape
    fns[_FOLD_NAMES[cols.dtype]](cols.ctypes.data, out.ctypes.data, n, oh, ow, kh, kw, c,
                                 out.shape[1], out.shape[2], stride[0], stride[1], dilation[0],
                                 dilation[1], int(parallel))
    return True


_FOLD_NAMES = {np.dtype(np.float32): "kiln_fold_f32", np.dtype(np.float64): "kiln_fold_f64"}


def unfold_kernel(x: np.ndarray, kernel: tuple, stride: tuple,
                  dilation: tuple) -> np.ndarray | None:
    """`unfold` in C: the (N, oh, ow, kh, kw, C) windows of an (N, C, H, W) array (of any dtype),
    or None to decline (nothing to copy, or no C compiler)."""
    n, c, h, w = x.shape
    oh, ow = windows_geometry((h, w), kernel, stride, dilation)
    out = np.empty((n, oh, ow) + tuple(kernel) + (c,), dtype=x.dtype)
    return out if unfold_into(x, out, stride, dilation) else None


def unfold_into(x: np.ndarray, out: np.ndarray, stride: tuple, dilation: tuple,
                parallel: bool = True) -> bool:
    """`unfold` in C of an (N, C, H, W) array into `out`, a C-contiguous (N, oh, ow, kh, kw, C)
    array of its dtype (a reused scratch buffer); False to decline, as `unfold_kernel`.
    `parallel=False` runs it on the calling thread alone (between BLAS calls, see `SOURCE`)."""
    if x.size == 0 or x.dtype.hasobject or out.dtype != x.dtype or not out.flags.c_contiguous:
        return False
    fns = _functions()
    if fns is None:
        return False
    n, oh, ow, kh, kw, c = out.shape
    image = x.transpose(0, 2, 3, 1)
    if c > 1 and image.strides[3] != image.itemsize:
        image = np.ascontiguousarray(image)   # an NCHW image: its channels made adjacent
    fns["kiln_unfold"](image.ctypes.data, out.ctypes.data, n, oh, ow, kh, kw, c,
                       image.itemsize, stride[0], stride[1], dilation[0], dilation[1],
                       *image.strides[:3], int(parallel))
    return True


def _after_fork_in_child() -> None:
    # GNU OpenMP cannot run a parallel region in a process forked after its threads started (the
    # child waits forever for threads it does not have): a forked child (a DataLoader worker)
    # convolves with NumPy, which gives the same values
    _KERNELS.disable()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
