"""The C kernels of kiln/runtime/conv_cpu.py give the bits of the NumPy backend's own routes and
of the primitives' definitions, and decline what they do not take (the NumPy route then runs)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from kiln.ir.ops import PRIMITIVES
from kiln.runtime import c_build, conv_cpu
from kiln.runtime.c_helpers import HelperKernels
from kiln.runtime.numpy_backend import numpy_impl

needs_cc = pytest.mark.skipif(c_build.compiler_problem() is not None,
                              reason="no working C compiler")


# what the NumPy backend runs for these primitives: the C kernel, else its own NumPy route
UNFOLD, FOLD = numpy_impl(PRIMITIVES["unfold"]), numpy_impl(PRIMITIVES["fold"])


def _numpy_unfold(x, kernel, stride, dilation, monkeypatch):
    """The NumPy backend's unfold with the C kernels off."""
    with monkeypatch.context() as m:
        m.setattr(conv_cpu, "_functions", lambda: None)
        return UNFOLD(np, x, kernel, stride, dilation)


def _numpy_fold(cols, size, kernel, stride, dilation, monkeypatch):
    """The NumPy backend's fold with the C kernels off."""
    with monkeypatch.context() as m:
        m.setattr(conv_cpu, "_functions", lambda: None)
        return FOLD(np, cols, size, kernel, stride, dilation)


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
    # the backend takes this route, and the primitive's definition sums in the same order
    assert _same_bits(FOLD(np, cols, size, kernel, stride, dilation), want)
    assert _same_bits(PRIMITIVES["fold"].impl(np, cols, size, kernel, stride, dilation), want)


def test_c_fold_declines_what_it_does_not_take(monkeypatch):
    cols = np.random.default_rng(2).normal(size=(2, 3, 3, 2, 2, 4))
    assert conv_cpu.fold_kernel(cols.astype(np.float16), (4, 4), (2, 2), (1, 1), (1, 1)) is None
    strided = cols.astype(np.float32)[:, :, :, :, :, ::2]          # windows not contiguous
    assert conv_cpu.fold_kernel(strided, (4, 4), (2, 2), (1, 1), (1, 1)) is None
    # a declined call still gets the right values from the NumPy route
    out = FOLD(np, strided, (4, 4), (2, 2), (1, 1), (1, 1))
    want = _numpy_fold(np.ascontiguousarray(strided), (4, 4), (2, 2), (1, 1), (1, 1),
                       monkeypatch)
    assert _same_bits(out, want)


def test_without_a_compiler_fold_and_unfold_run_on_numpy(monkeypatch):
    monkeypatch.setattr(conv_cpu, "_functions", lambda: None)
    x = np.random.default_rng(3).normal(size=(2, 3, 5, 5)).astype(np.float32)
    assert conv_cpu.unfold_kernel(x, (2, 2), (1, 1), (1, 1)) is None
    assert _same_bits(UNFOLD(np, x, (2, 2), (1, 1), (1, 1)),
                      PRIMITIVES["unfold"].impl(np, x, (2, 2), (1, 1), (1, 1)))
    cols = np.random.default_rng(3).normal(size=(2, 3, 3, 2, 2, 4)).astype(np.float32)
    assert conv_cpu.fold_kernel(cols, (4, 4), (2, 2), (1, 1), (1, 1)) is None
    want = PRIMITIVES["fold"].impl(np, cols, (4, 4), (2, 2), (1, 1), (1, 1))
    assert _same_bits(FOLD(np, cols, (4, 4), (2, 2), (1, 1), (1, 1)), want)


def _layouts(a: np.ndarray) -> dict:
    """`a` (N, C, H, W) as NCHW, as a channels-last view, as a window into a larger image and
    flipped (negative strides)."""
    n, c, h, w = a.shape
    big = np.zeros((n, h + 3, w + 2, c), a.dtype)
    big[:, 1:h + 1, 2:, :] = a.transpose(0, 2, 3, 1)
    return {"nchw": a, "channels_last": np.ascontiguousarray(a.transpose(0, 2, 3, 1))
            .transpose(0, 3, 1, 2), "window": big[:, 1:h + 1, 2:, :].transpose(0, 3, 1, 2),
            "flipped": a[:, ::-1, ::-1, :]}


@needs_cc
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.bool_])
@pytest.mark.parametrize("shape,kernel,stride,dilation", [
    ((4, 32, 12, 12), (3, 3), (1, 1), (1, 1)),
    ((2, 1, 9, 8), (3, 3), (1, 1), (1, 1)),               # one channel (conv1 of a CNN)
    ((2, 5, 11, 10), (3, 2), (2, 3), (2, 1)),             # strided and dilated
    ((3, 3, 7, 7), (1, 1), (2, 2), (1, 1))])
def test_c_unfold_gives_the_numpy_bits(shape, kernel, stride, dilation, dtype, monkeypatch):
    a = (np.random.default_rng(4).normal(size=shape) * 4).astype(dtype)
    for name, x in _layouts(a).items():
        out = conv_cpu.unfold_kernel(x, kernel, stride, dilation)
        assert out is not None, name
        want = _numpy_unfold(x, kernel, stride, dilation, monkeypatch)
        assert _same_bits(out, want), name
        assert _same_bits(UNFOLD(np, x, kernel, stride, dilation), want), name
        assert _same_bits(PRIMITIVES["unfold"].impl(np, x, kernel, stride, dilation), want), name


def test_c_unfold_values_are_the_windows():
    x = np.arange(2 * 3 * 6 * 7, dtype=np.float32).reshape(2, 3, 6, 7)
    out = conv_cpu.unfold_kernel(x, (2, 3), (2, 1), (1, 2))
    if out is None:
        pytest.skip("no working C compiler")
    for y, xo, i, j in [(0, 0, 0, 0), (1, 2, 1, 2), (2, 0, 1, 1)]:
        np.testing.assert_array_equal(out[:, y, xo, i, j, :], x[:, :, y * 2 + i, xo + j * 2])


def test_without_a_cache_directory_fold_and_unfold_run_on_numpy(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KILN_CACHE_DIR", str(blocker / "cache"))     # cannot be created
    fresh = HelperKernels(conv_cpu.SOURCE + "/* not in any cache */\n", conv_cpu._bind)
    monkeypatch.setattr(conv_cpu, "_functions", fresh.functions)
    x = np.random.default_rng(5).normal(size=(2, 3, 5, 5)).astype(np.float32)
    assert conv_cpu.unfold_kernel(x, (2, 2), (1, 1), (1, 1)) is None
    assert _same_bits(UNFOLD(np, x, (2, 2), (1, 1), (1, 1)),
                      PRIMITIVES["unfold"].impl(np, x, (2, 2), (1, 1), (1, 1)))


FORK_SCRIPT = """
import os
import numpy as np
import kiln
from kiln.ir.ops import PRIMITIVES
from kiln.runtime.numpy_backend import numpy_impl
kiln.set_num_threads(2)                     # the parent starts OpenMP's threads
# 660 KB of windows: past the size the kernel runs on one thread
cols = np.random.default_rng(0).normal(size=(8, 12, 12, 3, 3, 16)).astype(np.float32)
fold = numpy_impl(PRIMITIVES["fold"])
want = fold(np, cols, (14, 14), (3, 3), (1, 1), (1, 1))
pid = os.fork()
if pid == 0:
    import signal
    signal.alarm(30)                        # a hung child must not outlive the test
    got = fold(np, cols, (14, 14), (3, 3), (1, 1), (1, 1))
    os._exit(0 if np.array_equal(got, want) else 3)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@needs_cc
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_folds_without_hanging():
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == ["0"], out.stderr
