"""The NumPy backend: faster NumPy spellings of a few primitives, used by eager mode and the
NumPy executor.

A primitive's own `impl` (in `kiln.ir.ops`) is its meaning, written once for NumPy and CuPy
alike; it is what the IR interpreter and constant folding run. Where NumPy has a much faster
way to compute the same values for large arrays (a bit select for `where`, a BLAS product for
some sums and for batch norm's statistics, channels-last copies and C kernels for a
convolution's unfold and fold), it lives here, keyed by primitive, and `numpy_impl` picks it.
Each gives exactly the primitive's result (tests/runtime/test_numpy_backend.py compares them).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Callable

import numpy as np

from kiln.ir.ops import PRIMITIVES, Primitive, reduced_shape, windows_geometry
from kiln.runtime import gemm_cpu
from kiln.runtime.conv_cpu import fold_into, fold_kernel, unfold_into, unfold_kernel
from kiln.runtime.scatter_cpu import index_add_kernel


def numpy_impl(prim: Primitive) -> Callable:
    """The function computing `prim` on NumPy arrays: its fast path here, else its impl."""
    return FAST_PATHS.get(prim.name, prim.impl)


def _relu(xp, x):
    if x.size < 4096:
        return np.maximum(x, 0)
    # NumPy's maximum against a scalar runs ~2x slower than against an array of zeros (its
    # SIMD loop wants two strided operands); the zeros, laid out like x, take the result
    out = np.zeros_like(x)
    return np.maximum(x, out, out=out)


def _where(xp, c, x, y):
    if c.size < 4096:
        return np.where(c, x, y)
    # NumPy's where branches per element: on a mask that is not sorted (ReLU, dropout) it
    # runs ~8x slower than this branch-free bit select, out = y ^ ((x ^ y) & -c), done on
    # unsigned integers as wide as the result dtype, laid out like a full-size operand (a
    # permuted view in, a permuted result out, as NumPy's ufuncs do). A +0 side, common
    # (ReLU's gradient, masked_fill), takes two passes: y & (c - 1) or x & -c. The mask is
    # negated on its bytes (a bool is one byte, 0 or 1) straight into the wide integers,
    # ~2x cheaper than converting it first; this runs often enough that the checks below
    # avoid NumPy's slower helpers (broadcast_shapes, 0-d arrays for the literals).
    dtype = np.result_type(x, y)
    bits, signed = _BIT_TYPES[dtype.itemsize]
    sx, sy = np.shape(x), np.shape(y)
    shape = c.shape if sx in (c.shape, ()) and sy in (c.shape, ()) else \
        np.broadcast_shapes(c.shape, sx, sy)
    # the layout to follow: a full-size operand's, preferring one that is not a broadcast view
    like = next((a for a in (y, x, c) if np.shape(a) == shape and 0 not in a.strides), None)
    if like is None:
        like = next((a for a in (y, x, c) if np.shape(a) == shape), None)
    out = np.empty_like(like, bits) if like is not None else np.empty(shape, bits)
    mask = c.view(np.int8)
    if _is_plus_zero(x):
        np.subtract(mask, 1, out=out.view(signed), casting="unsafe")    # 1 -> 0, 0 -> ~0
        np.bitwise_and(out, _as_bits(y, dtype, bits), out=out)
    elif _is_plus_zero(y):
        np.negative(mask, out=out.view(signed), casting="unsafe")       # 1 -> ~0, 0 -> 0
        np.bitwise_and(out, _as_bits(x, dtype, bits), out=out)
    else:
        yb = _as_bits(y, dtype, bits)
        np.negative(mask, out=out.view(signed), casting="unsafe")
        np.bitwise_and(out, np.bitwise_xor(_as_bits(x, dtype, bits), yb), out=out)
        np.bitwise_xor(out, yb, out=out)
    return out.view(dtype)


_BIT_TYPES = {size: (np.dtype(f"u{size}"), np.dtype(f"i{size}")) for size in (1, 2, 4, 8)}


def _is_plus_zero(v) -> bool:
    """Whether `v` is a Python number whose bits are all zero (+0, not -0.0)."""
    return type(v) in (int, float, bool) and v == 0 and math.copysign(1.0, v) > 0


def _as_bits(a, dtype, bits):
    """`a` (an array or a Python number) in `dtype`, its bits read as the unsigned `bits`."""
    return np.asarray(a, dtype).view(bits) if np.ndim(a) else np.asarray(a, dtype)[()].view(bits)


def _sum(xp, x, axes, keepdim):
    if x.size < 4096 or x.dtype not in _BLAS_FLOATS or not axes or len(axes) == x.ndim:
        if x.dtype in _BLAS_FLOATS:
            # what x.sum(axis=axes, keepdims=keepdim, dtype=x.dtype) runs, without its two
            # Python wrappers (~0.5 us of a 16-element eager sum's ~4 us); same values
            return np.add.reduce(x, axes, x.dtype, None, keepdim)
        return _generic_sum(xp, x, axes, keepdim)
    # NumPy's sum runs its inner loop once per contiguous run: fast when the reduced axes lie
    # outside a long kept block (it adds whole slabs), slow on short runs, as when batch-norm
    # statistics and bias gradients sum NCHW over (0, 2, 3) (runs of H*W, or of C for a
    # channels-last view). Then: einsum when the innermost axis is reduced (2-4x faster), and
    # when it is kept and short, the array as a (kept, reduced) matrix times a vector of ones,
    # one BLAS call (more accurate than einsum's running sum over thousands of rows).
    strides = [abs(st) if n > 1 else math.inf for st, n in zip(x.strides, x.shape)]
    kept = [d for d in range(x.ndim) if d not in axes]
    out_shape = reduced_shape(x.shape, axes, keepdim)
    kept_block = math.prod(x.shape[d] for d in kept)
    if kept_block >= 64 and min(strides[d] for d in axes) > max(
            (strides[d] for d in kept if x.shape[d] > 1), default=0):
        return x.sum(axis=axes, keepdims=keepdim, dtype=x.dtype)
    inner = strides.index(min(strides))
    if inner in axes:
        letters = "abcdefghijklmnopqrstuvwxyz"[:x.ndim]
        result = "".join(letters[d] for d in kept)
        return np.einsum(f"{letters}->{result}", x).reshape(out_shape)
    if x.shape[inner] >= 64:
        return x.sum(axis=axes, keepdims=keepdim, dtype=x.dtype)
    m = x.transpose(kept + list(axes)).reshape(kept_block, x.size // kept_block)
    return (m @ np.ones(m.shape[1], x.dtype)).reshape(out_shape)


def _generic_sum(xp, x, axes, keepdim):
    return PRIMITIVES["sum"].impl(xp, x, axes, keepdim)


_BLAS_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# Training-mode batch norm on x (N, C, ...) as a (rows, C) matrix, channels innermost (a view of a
# conv's channels-last output): reductions over rows are one BLAS product with a vector of ones,
# and per-channel operands are tiled across rows of several pixels (NumPy runs its inner loop
# per row: over 16 channels it is 2-3x slower).

def _channel_rows(xp, x):
    """x (N, C, ...) as a (rows, C) matrix: a view when its channels are innermost in memory."""
    moved = x.transpose((0,) + tuple(range(2, x.ndim)) + (1,))
    return xp.ascontiguousarray(moved).reshape(-1, x.shape[1])


def _from_channel_rows(rows, like):
    """The inverse of _channel_rows: an (N, C, ...) view of a (rows, C) matrix."""
    moved = rows.reshape(like.shape[:1] + like.shape[2:] + like.shape[1:2])
    return moved.transpose((0, like.ndim - 1) + tuple(range(1, like.ndim - 1)))


def _per_channel(xp, ufunc, rows, v):
    """ufunc(rows, v) for a (rows, C) matrix and a (C,) vector, run over rows of k*C values."""
    m, c = rows.shape
    k = 1
    while k * c < 1024 and m % (2 * k) == 0:
        k *= 2
    tiled = xp.empty((k, c), v.dtype)
    tiled[...] = v
    return ufunc(rows.reshape(m // k, k * c), tiled.reshape(k * c)).reshape(m, c)


def _bn_statistics(xp, rows):
    """(mean, centered rows, biased variance) of a (rows, C) matrix, per channel."""
    n = rows.shape[0]
    ones = xp.ones(n, rows.dtype)
    mean = (ones @ rows) / n
    centered = _per_channel(xp, xp.subtract, rows, mean)
    return mean, centered, (ones @ (centered * centered)) / n


def _batch_norm(xp, x, eps):
    mean, centered, var = _bn_statistics(xp, _channel_rows(xp, x))
    invstd = 1 / xp.sqrt(var + eps)
    return _from_channel_rows(_per_channel(xp, xp.multiply, centered, invstd), x)


def _batch_norm_backward(xp, g, xhat, x, eps):
    mean, centered, var = _bn_statistics(xp, _channel_rows(xp, x))
    invstd = 1 / xp.sqrt(var + eps)
    g, xhat = _channel_rows(xp, g), _channel_rows(xp, xhat)
    n = g.shape[0]
    ones = xp.ones(n, g.dtype)
    mean_g, mean_gx = (ones @ g) / n, (ones @ (g * xhat)) / n
    # invstd * (g - mean_g - xhat * mean_gx), each per-channel factor applied once
    out = g - _per_channel(xp, xp.multiply, xhat, mean_gx)
    out = _per_channel(xp, xp.subtract, out, mean_g)
    return _from_channel_rows(_per_channel(xp, xp.multiply, out, invstd), x)


def _batch_stats(xp, x):
    mean, centered, var = _bn_statistics(xp, _channel_rows(xp, x))
    return xp.stack([mean, var])


# A convolution (nn.functional.conv2d) is pad, unfold, matmul; its input gradient ends in fold.
# A conv's output is channels-last (a view of its (N*oh*ow, O) product), and these keep that
# layout through the next layer: NumPy copies and adds run by run, and in NCHW order a window
# row is runs of one value where channels-last gives runs of kw*C.

def _pad(xp, x, pads, value):
    if x.flags.c_contiguous:
        return PRIMITIVES["pad"].impl(xp, x, pads, value)
    # laid out in x's memory order (a channels-last image stays channels-last): the copy
    # reads x in runs, and a conv's unfold of the result needs no transposing copy
    order = sorted(range(x.ndim), key=lambda d: -abs(x.strides[d]))
    shape = tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads))
    out = np.full(tuple(shape[d] for d in order), value, dtype=x.dtype).transpose(
        np.argsort(order))
    out[tuple(slice(lo, lo + d) for d, (lo, hi) in zip(x.shape, pads))] = x
    return out


def _unfold(xp, x, kernel, stride, dilation):
    out = unfold_kernel(x, kernel, stride, dilation)
    if out is not None:
        return out
    # the definition's strided copy, from a channels-last image: a window row (kw pixels of c
    # channels) is then one contiguous run (NumPy copies run by run: NCHW gives runs of one)
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return PRIMITIVES["unfold"].impl(np, channels_last, kernel, stride, dilation)


def _fold(xp, cols, size, kernel, stride, dilation):
    out = fold_kernel(cols, size, kernel, stride, dilation)
    if out is not None:
        return out
    n, oh, ow, kh, kw, c = cols.shape
    # summed channels-last, so each add runs over rows of ow*c contiguous values (in NCHW the
    # inner rows are ow long: 4x slower on small feature maps); returned as an NCHW view.
    # Windows that fit in cache are first copied window-position-major, so each add also
    # reads runs of ow*c values, not runs of c (64x4x4 windows of 3x3x16: ~1.5x faster);
    # larger ones gain nothing from the extra copy
    by_position = cols.transpose(3, 4, 0, 1, 2, 5)
    if cols.nbytes <= _FOLD_COPY_BYTES:
        by_position = np.ascontiguousarray(by_position)
    out = np.zeros((n,) + tuple(size) + (c,), dtype=cols.dtype)
    # last window position first, as the primitive's definition and the C kernel sum them
    for i in reversed(range(kh)):
        for j in reversed(range(kw)):
            r, q = i * dilation[0], j * dilation[1]
            out[:, r:r + stride[0] * (oh - 1) + 1:stride[0],
                q:q + stride[1] * (ow - 1) + 1:stride[1], :] += by_position[i, j]
    return out.transpose(0, 3, 1, 2)


_FOLD_COPY_BYTES = 4 << 20


# A convolution's products (`unfold_matmul`, `matmul_unfold`, `matmul_fold`, see kiln.ir.ops) a
# few images at a time. The windows matrix is kh*kw times the input (42 MB for a 3x3 conv of
# 32 channels on 64 26x26 images), so a product that reads or writes it whole is bound by
# memory, and unfolding or folding it all is another pass over memory. Here each chunk of images
# is unfolded into a buffer small enough to stay in cache, and BLAS reads it from there
# (`unfold_matmul`, on one thread gemm_cpu's kernel where it takes the weight, and
# `matmul_unfold`, which sums the chunks' products); or BLAS writes a
# chunk's windows there and they are folded into the chunk's images at once (`matmul_fold`).
# Same products, rows computed apart; the weight gradient's sum over rows is added up chunk by
# chunk (float rounding differs from one whole product by reassociation only). A chunk's
# unfold or fold runs on the calling thread between two GEMMs (`parallel`), a single
# chunk's on the OpenMP team.

_CHUNK_BYTES = 2 << 20          # windows per chunk: L2 plus a share of L3 holds them
_KEPT_SCRATCH_BYTES = 16 << 20  # larger buffers (images of ~1000x1000) are not kept between calls
_SCRATCH = threading.local()


def _chunk_geometry(x_shape: tuple, kernel: tuple, stride: tuple, dilation: tuple,
                    itemsize: int) -> tuple:
    """(images per chunk, windows per image) for the windows of an (N, C, H, W) shape."""
    n, c = x_shape[:2]
    oh, ow = windows_geometry(x_shape[2:], kernel, stride, dilation)
    if _threads() > 1:
        # one chunk: each chunk's GEMM is a hand-off between BLAS's threads, and on cores that
        # other jobs share each hand-off may wait a scheduler time slice for the other thread;
        # on idle cores, threads reading the whole windows gain about what chunks would
        return n, oh * ow
    per_image = oh * ow * kernel[0] * kernel[1] * c * itemsize
    return max(1, min(n, _CHUNK_BYTES // max(per_image, 1))), oh * ow


def _threads() -> int:
    """The threads `kiln.set_num_threads` asked for (else one per core)."""
    from kiln.runtime import c_build     # here: it loads the code generators
    return c_build.threads_setting() or os.cpu_count() or 1


def _windows_scratch(images: int, x_shape: tuple, kernel: tuple, stride: tuple,
                     dilation: tuple, dtype) -> np.ndarray:
    """A C-contiguous (images, oh, ow, kh, kw, C) buffer, this thread's, reused across calls."""
    oh, ow = windows_geometry(x_shape[2:], kernel, stride, dilation)
    shape = (images, oh, ow) + tuple(kernel) + (x_shape[1],)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _KEPT_SCRATCH_BYTES:
        return np.empty(shape, dtype)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _SCRATCH.buf = np.empty(max(nbytes, 1 << 20), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def _unfold_matmul(xp, x, w, kernel, stride, dilation):
    if x.dtype not in _BLAS_FLOATS or w.dtype != x.dtype or x.size == 0:
        return PRIMITIVES["unfold_matmul"].impl(xp, x, w, kernel, stride, dilation)
    step, m = _chunk_geometry(x.shape, kernel, stride, dilation, x.itemsize)
    n, k = x.shape[0], w.shape[0]
    scratch = _windows_scratch(step, x.shape, kernel, stride, dilation, x.dtype)
    out = np.empty((n * m, w.shape[1]), x.dtype)
    thin = _thin_windows_product(w)
    if thin is not None:
        w = np.ascontiguousarray(w)        # the kernel reads the weight's rows in place
    for b in range(0, n, step):
        e = min(n, b + step)
        cols = scratch[:e - b]
        if not unfold_into(x[b:e], cols, stride, dilation, parallel=step >= n):
            # no C compiler: the whole product, in NumPy
            return PRIMITIVES["unfold_matmul"].impl(xp, x, w, kernel, stride, dilation)
        if thin is not None:
            thin(cols.ctypes.data, k, w.ctypes.data, w.shape[1], out[b * m:].ctypes.data,
                 (e - b) * m, k, w.shape[1])
        else:
            np.matmul(cols.reshape((e - b) * m, k), w, out=out[b * m:e * m])
    return out


def _thin_windows_gradient(a, k: int):
    """gemm_cpu's transposed kernel when it takes a float32 weight gradient `a @ windows` on
    one thread, `a` the (O, rows) transpose of the output gradient's rows (1.2x BLAS's speed
    on the 28x28 CNN's conv2 chunks), else None: BLAS runs it."""
    if a.dtype != np.float32 or a.strides[0] != a.itemsize or a.strides[1] % a.itemsize or \
            not gemm_cpu.takes_windows(k, a.shape[0]) or _threads() > 1:
        return None
    return gemm_cpu.transposed_kernel()


def _thin_windows_product(w):
    """gemm_cpu's kernel when it takes a float32 forward product by `w` on one thread (each
    chunk's product in cache, at 1.1x BLAS's speed), else None: BLAS runs it."""
    if w.dtype != np.float32 or not gemm_cpu.takes_windows(*w.shape) or _threads() > 1:
        return None
    return gemm_cpu.kernel()


def _matmul_unfold(xp, a, x, kernel, stride, dilation):
    if x.dtype not in _BLAS_FLOATS or a.dtype != x.dtype or x.size == 0:
        return PRIMITIVES["matmul_unfold"].impl(xp, a, x, kernel, stride, dilation)
    step, m = _chunk_geometry(x.shape, kernel, stride, dilation, x.itemsize)
    n = x.shape[0]
    scratch = _windows_scratch(step, x.shape, kernel, stride, dilation, x.dtype)
    k = scratch[0].size // m
    tn = _thin_windows_gradient(a, k)
    if tn is not None:
        # gemm_cpu's kernel: out^T (k x O) = windows^T @ a^T, each chunk's product summed on
        # its own and added, as below (one running sum over every row would lose precision)
        out_t = np.empty((k, a.shape[0]), x.dtype)
        part = np.empty_like(out_t) if step < n else out_t
        ldb = a.strides[1] // a.itemsize
        for b in range(0, n, step):
            e = min(n, b + step)
            if not unfold_into(x[b:e], scratch[:e - b], stride, dilation,
                               parallel=step >= n):
                return PRIMITIVES["matmul_unfold"].impl(xp, a, x, kernel, stride, dilation)
            dest = out_t if b == 0 else part
            tn(scratch.ctypes.data, k, a.ctypes.data + b * m * a.strides[1], ldb,
               dest.ctypes.data, k, (e - b) * m, a.shape[0])
            if b:
                np.add(out_t, part, out=out_t)
        return out_t.T
    # OpenBLAS makes a wide result markedly faster than a tall one over the same long inner
    # dimension (a 1-channel conv's 32x9 weight gradient): a tall one is made transposed
    tall = a.shape[0] > k
    out = part = None
    for b in range(0, n, step):
        e = min(n, b + step)
        cols = scratch[:e - b].reshape((e - b) * m, k)
        if not unfold_into(x[b:e], scratch[:e - b], stride, dilation,
                           parallel=step >= n):
            return PRIMITIVES["matmul_unfold"].impl(xp, a, x, kernel, stride, dilation)
        rows = a[:, b * m:e * m]
        if out is None:
            out = np.matmul(cols.T, rows.T) if tall else np.matmul(rows, cols)
            part = np.empty_like(out)
        else:
            np.add(out, np.matmul(cols.T, rows.T, out=part) if tall else
                   np.matmul(rows, cols, out=part), out=out)
    return out.T if tall else out


def _matmul_fold(xp, a, b, size, kernel, stride, dilation, channels_last=False):
    if a.dtype not in _BLAS_FLOATS or b.dtype != a.dtype or a.size == 0 or b.size == 0:
        return PRIMITIVES["matmul_fold"].impl(xp, a, b, size, kernel, stride, dilation,
                                              channels_last)
    kh, kw = kernel
    oh, ow = windows_geometry(size, kernel, stride, dilation)
    m, c = oh * ow, b.shape[1] // (kh * kw)
    n = a.shape[0] // m
    step, _ = _chunk_geometry((n, c) + tuple(size), kernel, stride, dilation, a.itemsize)
    scratch = _windows_scratch(step, (n, c) + tuple(size), kernel, stride, dilation, a.dtype)
    out = np.empty((n,) + tuple(size) + (c,), a.dtype)
    for i in range(0, n, step):
        e = min(n, i + step)
        cols = scratch[:e - i]
        np.matmul(a[i * m:e * m], b, out=cols.reshape((e - i) * m, kh * kw * c))
        if not fold_into(cols, out[i:e], stride, dilation, parallel=step >= n):
            return PRIMITIVES["matmul_fold"].impl(xp, a, b, size, kernel, stride, dilation,
                                                  channels_last)
    # channels-last, as `fold`'s other routes; `channels_last`: as (N, H, W, C) itself
    return out if channels_last else out.transpose(0, 3, 1, 2)


def _index_add(xp, base, idx, src, axis):
    out = index_add_kernel(base, idx, src, axis)
    return out if out is not None else PRIMITIVES["index_add"].impl(np, base, idx, src, axis)


def _slice(xp, x, starts, stops, steps):
    # one- and two-dim slices spelled out: building the tuple of slice objects costs more
    # than a 16-element eager slice's NumPy work (~0.2 us of ~3.2 us); the same view
    if len(starts) == 1:
        return x[starts[0]:stops[0]:steps[0]]
    if len(starts) == 2:
        return x[starts[0]:stops[0]:steps[0], starts[1]:stops[1]:steps[1]]
    return x[tuple(map(slice, starts, stops, steps))]


# primitive name -> its faster NumPy spelling, (xp, *arrays, **attrs) -> array as `impl`
FAST_PATHS: dict[str, Callable] = {
    "relu": _relu, "where": _where, "sum": _sum, "batch_norm": _batch_norm,
    "batch_norm_backward": _batch_norm_backward, "batch_stats": _batch_stats, "pad": _pad,
    "unfold": _unfold, "fold": _fold, "unfold_matmul": _unfold_matmul,
    "matmul_unfold": _matmul_unfold, "matmul_fold": _matmul_fold, "index_add": _index_add,
    "slice": _slice}
