"""The NumPy backend's fast paths give the same bits as the plain NumPy call or the primitive's
definition.

Some take a faster route for large NumPy arrays (where's bit select, relu against an array of
zeros); the parity tests draw small shapes, so these run the large-array paths directly, over
dtypes, memory layouts and the literals that take special routes (+0, -0.0). Fold sums each
pixel's windows in one order on every route (definition, NumPy, C kernel).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kiln.ir.ops import PRIMITIVES
from kiln.runtime import conv_cpu
from kiln.runtime.numpy_backend import numpy_impl

SHAPE = (8, 16, 8, 8)                      # 8192 elements: past the fast paths' threshold


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


def _channels_last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose(0, 3, 1, 2)


def _values(dtype, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).normal(0, 5, SHAPE)
    if np.dtype(dtype).kind == "f":
        values.reshape(-1)[:4] = [np.nan, -0.0, np.inf, -np.inf]
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.int32,
                                   np.int8, np.bool_])
def test_where_matches_numpy_bit_for_bit(dtype):
    base = _values(dtype)
    arrays = [base, _channels_last(base), np.broadcast_to(base[:1], SHAPE), base[:1, :, :1]]
    literals = [0, 0.0, -0.0, 1.5, 3, True]
    cond = base.astype(np.float64) > 0
    conds = [cond, _channels_last(cond), np.broadcast_to(cond[:1], SHAPE), cond[:, :1]]
    where = numpy_impl(PRIMITIVES["where"])
    for c, x, y in itertools.product(conds, arrays + literals, arrays + literals):
        if SHAPE not in (np.shape(c), np.shape(x), np.shape(y)):
            continue
        out = where(np, c, x, y)
        assert _same_bits(out, np.where(c, x, y)), (np.shape(c), np.shape(x), np.shape(y))


def test_where_result_follows_a_dense_operand_layout():
    x = _channels_last(_values(np.float32))
    out = numpy_impl(PRIMITIVES["where"])(np, x > 0, x, 0.0)
    assert out.strides == x.strides


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_relu_matches_numpy_maximum_bit_for_bit(dtype):
    relu = numpy_impl(PRIMITIVES["relu"])
    for x in (_values(dtype), _channels_last(_values(dtype))):
        out = relu(np, x)
        assert _same_bits(out, np.maximum(x, 0))
        assert out.strides == x.strides


def test_pad_matches_numpy_and_keeps_a_permuted_layout():
    pads = ((0, 0), (0, 0), (1, 2), (2, 1))
    base = _values(np.float32)
    for pad in (numpy_impl(PRIMITIVES["pad"]), PRIMITIVES["pad"].impl):
        for x in (base, _channels_last(base), base[:, :, ::2], np.broadcast_to(base[:1], SHAPE),
                  base[:, ::-1].transpose(0, 2, 1, 3)):
            out = pad(np, x, pads, 0.5)
            assert _same_bits(out, np.pad(x, pads, constant_values=0.5))
    out = numpy_impl(PRIMITIVES["pad"])(np, _channels_last(base), pads, 0.0)
    assert out.strides[1] == out.itemsize          # still channels-last: unfold reads it as is


@pytest.mark.parametrize("cols_shape,size,stride,dilation", [
    ((64, 4, 4, 3, 3, 16), (6, 6), (1, 1), (1, 1)),       # copied window-position-major
    ((2, 3, 3, 3, 2, 5), (7, 6), (2, 1), (1, 2)),
    ((8, 30, 30, 3, 3, 32), (32, 32), (1, 1), (1, 1))])   # past the copy's size limit
# the primitive's definition, the backend's NumPy route, and the backend's C kernel, if any
@pytest.mark.parametrize("route", ["definition", "numpy", "backend"])
def test_fold_sums_windows_back_into_the_image(cols_shape, size, stride, dilation, route,
                                               monkeypatch):
    if route == "numpy":
        monkeypatch.setattr(conv_cpu, "_functions", lambda: None)
    cols = np.random.default_rng(0).normal(size=cols_shape).astype(np.float32)
    n, oh, ow, kh, kw, c = cols_shape
    want = np.zeros((n, c) + size, np.float32)
    for i in reversed(range(kh)):              # each pixel sums its windows in `cols` order
        for j in reversed(range(kw)):
            for y in range(oh):
                r = y * stride[0] + i * dilation[0]
                want[:, :, r, j * dilation[1]:j * dilation[1] + stride[1] * (ow - 1) + 1:
                     stride[1]] += cols[:, y, :, i, j, :].transpose(0, 2, 1)
    fold = PRIMITIVES["fold"].impl if route == "definition" else numpy_impl(PRIMITIVES["fold"])
    out = fold(np, cols, size, (kh, kw), stride, dilation)
    assert _same_bits(out, want)
