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
from typing import Callable

import numpy as np

from kiln.ir.ops import PRIMITIVES, Primitive, reduced_shape
from kiln.runtime.conv_cpu import fold_kernel, unfold_kernel
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


def _index_add(xp, base, idx, src, axis):
    out = index_add_kernel(base, idx, src, axis)
    return out if out is not None else PRIMITIVES["index_add"].impl(np, base, idx, src, axis)


# primitive name -> its faster NumPy spelling, (xp, *arrays, **attrs) -> array as `impl`
FAST_PATHS: dict[str, Callable] = {
    "relu": _relu, "where": _where, "sum": _sum, "batch_norm": _batch_norm,
    "batch_norm_backward": _batch_norm_backward, "batch_stats": _batch_stats, "pad": _pad,
    "unfold": _unfold, "fold": _fold}
FAST_PATHS["index_add"] = _index_add     # kiln.runtime.scatter_cpu
