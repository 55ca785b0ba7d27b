"""The CuPy backend: faster spellings of a few primitives for eager ops on cuda arrays.

A primitive's own `impl` (in `kiln.ir.ops`) is its meaning, written once for NumPy and CuPy
alike. Eager mode on a GPU is bound by the host: every CuPy call or kernel launch costs it
microseconds, however little the GPU then does. Where one kernel launch can replace many CuPy
calls, the replacement lives here, keyed by primitive, and `cupy_impl` picks it (as
`kiln.runtime.numpy_backend.numpy_impl` does for NumPy).

A convolution's three products (`unfold_matmul`, the forward; `matmul_unfold`, the weight
gradient; `matmul_fold`, the input gradient) run as one implicit-GEMM Triton kernel each
(`kiln.codegen.conv_triton`, the kernels compiled programs use), where `conv_route` chooses that
route for the shape: no windows made in memory, and no fold of kh*kw window positions. The
kernel for a shape and layout is rendered and its launcher prepared once, then reused.
Elsewhere (float64, a route forced or measured as "unfold", sizes past 32-bit indexing) the
product stays unfold + matmul, and a `fold` (that input gradient's, or a grouped convolution's)
is one launch of `conv_triton`'s fold kernel instead of kh*kw adds.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from kiln.codegen import conv as conv_routes
from kiln.codegen.conv_triton import (DTYPES, FOLD_DTYPES, ConvGeometry, render_conv_kernel,
                                      render_fold_kernel)
from kiln.ir.ops import PRIMITIVES, Primitive, windows_geometry
from kiln.runtime.triton_launch import CudaKernelLauncher

_FLOATS = {d.np_dtype: d for d in DTYPES}             # the implicit-GEMM kernels' dtypes
_FOLD_FLOATS = {d.np_dtype: d for d in FOLD_DTYPES}    # the fold kernel's
_INT32 = 2 ** 31 - 1        # the fold kernel indexes with 32-bit integers

# (kind, shapes, strides, dtype, window attributes, routing state, thread) -> the launcher,
# or None where the product stays on its impl; a shape that keeps changing makes new entries,
# so the table is emptied past a limit
_LAUNCHERS: dict = {}
_LAUNCHERS_LIMIT = 1024


def cupy_impl(prim: Primitive) -> Callable:
    """The function computing `prim` on CuPy arrays: its path here, else its impl."""
    return CUPY_PATHS.get(prim.name, prim.impl)


def _element_strides(a) -> tuple | None:
    """`a`'s strides in elements when its elements fill exactly its span of memory (C order,
    or a permutation of it: a transposed matrix), else None. The kernels take any such layout
    as compile-time strides; the memory a launch hands over is that span."""
    item = a.itemsize
    flags = a.flags
    if flags.c_contiguous or flags.f_contiguous:        # the common cases, found quickly
        return tuple([s // item for s in a.strides])
    strides = tuple(s // item for s in a.strides)
    if any(s * item != b or s < 0 for s, b in zip(strides, a.strides)):
        return None
    expect = 1
    for s, n in sorted((s, n) for s, n in zip(strides, a.shape) if n > 1):
        if s != expect:
            return None
        expect *= n
    return strides


def _dense(xp, a) -> tuple:
    """(a, or a C-contiguous copy of it, its element strides)."""
    strides = _element_strides(a)
    if strides is None:
        a = xp.ascontiguousarray(a)
        strides = _element_strides(a)
    return a, strides


def _cached(key: tuple, make: Callable) -> CudaKernelLauncher | None:
    """The launcher kept for `key`, from `make()` on first use (None: no kernel for it)."""
    # a launcher keeps its last call's arguments: each thread has its own
    key = key + (threading.get_ident(),)
    try:
        return _LAUNCHERS[key]
    except KeyError:
        pass
    launcher = make()
    if len(_LAUNCHERS) >= _LAUNCHERS_LIMIT:
        _LAUNCHERS.clear()
    _LAUNCHERS[key] = launcher
    return launcher


def _launcher(kind: str, key: tuple, make: Callable) -> CudaKernelLauncher | None:
    """The launcher of a product's implicit-GEMM kernel, or None where `conv_route` keeps the
    product on the unfold route; made (route chosen, kernel rendered) on first use: `make()`
    -> (geometry, dtype, kernel strides) of the product."""
    def build():
        geometry, dtype, strides = make()
        route, _ = conv_routes.conv_route(kind, geometry, dtype)
        if route != "implicit_gemm":    # (conv_route keeps sizes past 32-bit indexing off it)
            return None
        return CudaKernelLauncher(render_conv_kernel(
            kind, geometry, dtype, strides, blocks=conv_routes.conv_blocks(kind, geometry,
                                                                           dtype)))
    # the route may be forced (KILN_CONV_ROUTE) or measured (conv_gpu) after a first call
    return _cached(key + (os.environ.get("KILN_CONV_ROUTE"), len(conv_routes.MEASURED_ROUTES)),
                   build)


def _usable(*arrays) -> bool:
    """Whether the kernels take these arrays: one float dtype they support, no empty one."""
    dtype = arrays[0].dtype
    return dtype in _FLOATS and all(a.dtype == dtype and a.size for a in arrays)


def _unfold_matmul(xp, x, w, kernel, stride, dilation):
    # out[(n, y, x), o] = sum over (i, j, c) of x[n, c, y*sh + i*dh, x*sw + j*dw] * w[(i, j, c), o]
    if not _usable(x, w):
        return PRIMITIVES["unfold_matmul"].impl(xp, x, w, kernel, stride, dilation)
    x, xs = _dense(xp, x)
    w, ws = _dense(xp, w)
    n, c, h, wd = x.shape
    o = w.shape[1]

    def make():
        g = ConvGeometry(n, c, h, wd, o, kernel[0], kernel[1], tuple(stride), (0, 0),
                         tuple(dilation))
        oh, ow = g.out_size
        sk, so = ws                     # w[(i, j, c), o] read as w[o, c, i, j]
        return g, _FLOATS[x.dtype], (xs, (so, sk, kernel[1] * c * sk, c * sk),
                                     (oh * ow * o, 1, ow * o, o))
    launch = _launcher("forward", ("forward", x.shape, xs, w.shape, ws, x.dtype, kernel, stride,
                                   dilation), make)
    if launch is None:
        return PRIMITIVES["unfold_matmul"].impl(xp, x, w, kernel, stride, dilation)
    oh, ow = windows_geometry((h, wd), kernel, stride, dilation)
    out = xp.empty((n * oh * ow, o), x.dtype)
    launch([x, w], [out])
    return out


def _matmul_unfold(xp, a, x, kernel, stride, dilation):
    # out[o, (i, j, c)] = sum over (n, y, x) of a[o, (n, y, x)] * x[n, c, y*sh + i*dh, ...]
    if not _usable(a, x):
        return PRIMITIVES["matmul_unfold"].impl(xp, a, x, kernel, stride, dilation)
    a, as_ = _dense(xp, a)
    x, xs = _dense(xp, x)
    n, c, h, wd = x.shape
    o = a.shape[0]
    k = kernel[0] * kernel[1] * c

    def make():
        g = ConvGeometry(n, c, h, wd, o, kernel[0], kernel[1], tuple(stride), (0, 0),
                         tuple(dilation))
        oh, ow = g.out_size
        so, sr = as_                    # a[o, (n, y, x)] read as g[n, o, y, x]
        return g, _FLOATS[x.dtype], (xs, (oh * ow * sr, so, ow * sr, sr),
                                     (k, 1, kernel[1] * c, c))
    launch = _launcher("weight_grad", ("weight_grad", a.shape, as_, x.shape, xs, x.dtype,
                                       kernel, stride, dilation), make)
    if launch is None:
        return PRIMITIVES["matmul_unfold"].impl(xp, a, x, kernel, stride, dilation)
    out = xp.empty((o, k), x.dtype)     # zeroed by the launcher where the sum is split
    launch([x, a], [out])
    return out


def _matmul_fold(xp, a, b, size, kernel, stride, dilation, channels_last=False):
    # out[n, c, h, w] = sum over (o, i, j) of a[(n, y, x), o] * b[o, (i, j, c)] where pixel
    # (h, w) is offset (i, j) of the window at (y, x)
    if a.dtype != b.dtype or not a.size or not b.size:
        return PRIMITIVES["matmul_fold"].impl(xp, a, b, size, kernel, stride, dilation,
                                              channels_last)
    oh, ow = windows_geometry(size, kernel, stride, dilation)
    o = a.shape[1]
    n, c = a.shape[0] // (oh * ow), b.shape[1] // (kernel[0] * kernel[1])
    h, wd = size
    shape = (n, h, wd, c) if channels_last else (n, c, h, wd)
    launch = None
    if _usable(a, b):
        a, as_ = _dense(xp, a)
        b, bs = _dense(xp, b)

        def make():
            g = ConvGeometry(n, c, h, wd, o, kernel[0], kernel[1], tuple(stride), (0, 0),
                             tuple(dilation))
            sr, so = as_                # a[(n, y, x), o] read as g[n, o, y, x]
            to, tk = bs                 # b[o, (i, j, c)] read as w[o, c, i, j]
            out = (h * wd * c, 1, wd * c, c) if channels_last else (c * h * wd, h * wd, wd, 1)
            return g, _FLOATS[a.dtype], ((oh * ow * sr, so, ow * sr, sr),
                                         (to, tk, kernel[1] * c * tk, c * tk), out)
        launch = _launcher("input_grad", ("input_grad", a.shape, as_, b.shape, bs, a.dtype,
                                          size, kernel, stride, dilation, channels_last), make)
    if launch is None:      # float64, or the unfold route: the product, then one fold
        cols = xp.matmul(a, b).reshape((n, oh, ow) + tuple(kernel) + (c,))
        return _fold(xp, cols, size, kernel, stride, dilation, channels_last)
    out = xp.empty(shape, a.dtype)
    launch([a, b], [out])
    return out


def _fold(xp, cols, size, kernel, stride, dilation, channels_last=False):
    # one launch where `ir.ops`' fold makes kh*kw adds (and as many views of each operand)
    n, oh, ow, kh, kw, c = cols.shape
    out_shape = (n,) + tuple(size) + (c,) if channels_last else (n, c) + tuple(size)
    if cols.dtype not in _FOLD_FLOATS or not cols.size or \
            max(cols.size, n * c * size[0] * size[1]) > _INT32:
        return PRIMITIVES["fold"].impl(xp, cols, size, kernel, stride, dilation, channels_last)
    if not cols.flags.c_contiguous:
        cols = xp.ascontiguousarray(cols)
    launch = _cached(("fold", cols.shape, cols.dtype, size, stride, dilation, channels_last),
                     lambda: CudaKernelLauncher(render_fold_kernel(
                         cols.shape, size, stride, dilation, _FOLD_FLOATS[cols.dtype],
                         channels_last)))
    out = xp.empty(out_shape, cols.dtype)
    launch([cols], [out])
    return out


# primitive name -> its CuPy spelling, (xp, *arrays, **attrs) -> array as `impl`
CUPY_PATHS: dict[str, Callable] = {
    "unfold_matmul": _unfold_matmul, "matmul_unfold": _matmul_unfold,
    "matmul_fold": _matmul_fold, "fold": _fold}


__all__ = ["CUPY_PATHS", "cupy_impl"]
