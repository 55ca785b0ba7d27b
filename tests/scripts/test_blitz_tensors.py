"""60-minute blitz, tensors: creation, indexing, cat/stack, matmul/mul (with out=), in-place
ops and the NumPy bridge give the same values in both libraries."""

from tests.scripts.harness import check_same_values


def test_blitz_tensors_same_values_as_torch():
    check_same_values("blitz_tensors")
