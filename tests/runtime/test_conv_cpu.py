"""The C kernels of kiln/runtime/conv_cpu.py give the NumPy routes' bits, and decline what they
do not take (the NumPy route then runs)."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.ir import ops as ir_ops
from kiln.ir.ops import PRIMITIVES
from kiln.runtime import c_build, conv_cpu

needs_cc = pytest.mark.skipif(c_build.compiler_problem() is not None,
                              reason="no working C compiler")


def _numpy_fold(cols, size, kernel, stride, dilation, monkeypatch):
    with monkeypatch.context() as m:
        m.delitem(ir_ops.CPU_KERNELS, "fold")
        return PRIMITIVES["fold"].impl(np, cols, size, kernel, stride, dilation)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


@needs_cc
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols_shape,size,stride,dilation", [
    ((4, 24, 24, 3, 3, 32), (26, 26), (1, 1), (1, 1)),    # the 28x28 CNN's conv2
    ((64, 4, 4, 3, 3, 16), (6, 6), (1, 1), (1, 1)),       # NumPy copies these first
    ((2, 3, 3, 3, 2, 5), (7, 6), (2, 1), (1, 2)),         # strided and dilated
    ((2, 3, 4, 2, 3, 3), (10, 10), (3, 2), (2, 1)),       # rows and columns no window covers
    ((3, 5, 5, 1, 1, 4), (9, 9), (2, 2), (1, 1)),         # 1x1 windows with gaps
    ((1, 2, 2, 5, 5, 1), (6, 6), (1, 1), (1, 1))])        # windows overlapping four deep
def test_c_fold_gives_the_numpy_bits(cols_shape, size, stride, dilation, dtype, monkeypatch):
    cols = np.random.default_rng(1).normal(size=cols_shape).astype(dtype)
    kernel = cols_shape[3:5]
    out = conv_cpu.fold_kernel(cols, size, kernel, stride, dilation)
    assert out is not None
    want = _numpy_fold(cols, size, kernel, stride, dilation, monkeypatch)
    assert out.shape == want.shape and out.strides[1] == out.itemsize     # channels-last view
    assert _same_bits(out, want)
    # and the primitive takes this route when the runtime is loaded
    assert _same_bits(PRIMITIVES["fold"].impl(np, cols, size, kernel, stride, dilation), want)


def test_c_fold_declines_what_it_does_not_take(monkeypatch):
    cols = np.random.default_rng(2).normal(size=(2, 3, 3, 2, 2, 4))
    assert conv_cpu.fold_kernel(cols.astype(np.float16), (4, 4), (2, 2), (1, 1), (1, 1)) is None
    strided = cols.astype(np.float32)[:, :, :, :, :, ::2]          # windows not contiguous
    assert conv_cpu.fold_kernel(strided, (4, 4), (2, 2), (1, 1), (1, 1)) is None
    # a declined call still gets the right values from the NumPy route
    out = PRIMITIVES["fold"].impl(np, strided, (4, 4), (2, 2), (1, 1), (1, 1))
    want = _numpy_fold(np.ascontiguousarray(strided), (4, 4), (2, 2), (1, 1), (1, 1),
                       monkeypatch)
    assert _same_bits(out, want)


def test_without_a_compiler_fold_runs_on_numpy(monkeypatch):
    monkeypatch.setattr(conv_cpu, "_state", {"fns": None})
    cols = np.random.default_rng(3).normal(size=(2, 3, 3, 2, 2, 4)).astype(np.float32)
    assert conv_cpu.fold_kernel(cols, (4, 4), (2, 2), (1, 1), (1, 1)) is None
    want = _numpy_fold(cols, (4, 4), (2, 2), (1, 1), (1, 1), monkeypatch)
    assert _same_bits(PRIMITIVES["fold"].impl(np, cols, (4, 4), (2, 2), (1, 1), (1, 1)), want)
