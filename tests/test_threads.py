"""kiln.set_num_threads / get_num_threads limit NumPy's BLAS threads as torch's do."""

import pytest

import kiln

pytest.importorskip("threadpoolctl")


def test_set_num_threads_limits_blas_and_rejects_zero():
    before = kiln.get_num_threads()
    try:
        kiln.set_num_threads(1)
        assert kiln.get_num_threads() == 1
        with pytest.raises(ValueError, match="must be positive"):
            kiln.set_num_threads(0)
    finally:
        kiln.set_num_threads(before)
    assert kiln.get_num_threads() == before
