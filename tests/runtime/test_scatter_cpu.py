"""The C index_add kernel gives exactly what the primitive's definition (np.add.at) gives."""

import numpy as np
import pytest
import torch

from kiln.ir.ops import PRIMITIVES
from kiln.runtime.numpy_backend import FAST_PATHS
from kiln.runtime.scatter_cpu import index_add_kernel

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("shape,axis,n", [((1000, 64), 0, 700), ((7,), 0, 30),
                                          ((3, 9, 5), 1, 12), ((4, 6), 1, 10),
                                          ((700000,), 0, 700)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("itype", [np.int64, np.int32])
def test_index_add_is_bit_identical_to_the_definition(shape, axis, n, dtype, itype):
    base = RNG.standard_normal(shape).astype(dtype)
    size = shape[axis]
    idx = RNG.integers(-size, size, n).astype(itype)     # duplicates and negatives
    src = RNG.standard_normal(shape[:axis] + (n,) + shape[axis + 1:]).astype(dtype)
    want = PRIMITIVES["index_add"].impl(np, base, idx, src, axis)
    got = index_add_kernel(base, idx, src, axis)
    assert got is not None and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(FAST_PATHS["index_add"](np, base, idx, src, axis), want)
    # and the values PyTorch gives (its own summation order: a tolerance)
    ref = torch.from_numpy(base.copy()).index_add_(
        axis, torch.from_numpy(np.where(idx < 0, idx + size, idx).astype(np.int64)),
        torch.from_numpy(src))
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_index_add_reads_views_and_leaves_its_inputs():
    base = RNG.standard_normal((5, 8)).astype(np.float32)
    src = RNG.standard_normal((8, 6)).astype(np.float32).T        # (6, 8), not contiguous
    idx = np.array([4, 0, 4, 1, 1, 3])
    keep = base.copy(), src.copy()
    got = FAST_PATHS["index_add"](np, base, idx, src, 0)
    np.testing.assert_array_equal(got, PRIMITIVES["index_add"].impl(np, base, idx, src, 0))
    np.testing.assert_array_equal(base, keep[0])
    np.testing.assert_array_equal(src, keep[1])


def test_out_of_range_index_raises_as_the_definition_does():
    base = np.zeros((4, 3), np.float32)
    src = np.ones((2, 3), np.float32)
    idx = np.array([1, 4])
    assert index_add_kernel(base, idx, src, 0) is None
    with pytest.raises(IndexError):
        FAST_PATHS["index_add"](np, base, idx, src, 0)


def test_other_dtypes_decline():
    base = np.zeros((4,), np.int64)
    assert index_add_kernel(base, np.array([1, 1]), np.array([2, 3]), 0) is None
    np.testing.assert_array_equal(FAST_PATHS["index_add"](np, base, np.array([1, 1]),
                                                          np.array([2, 3]), 0), [0, 5, 0, 0])
