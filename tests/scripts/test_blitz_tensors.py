"""60-minute blitz, tensors: creation, indexing, cat/stack, matmul/mul (with out=), in-place
ops and the NumPy bridge give the same values in both libraries."""

import pytest

import kiln
from tests.scripts.harness import check_same_values


def _has_out_arguments() -> bool:
    try:
        kiln.matmul(kiln.ones(1, 1), kiln.ones(1, 1), out=kiln.empty(1, 1))
        return True
    except TypeError:
        return False


@pytest.mark.xfail(not _has_out_arguments(), strict=False,
                   reason="needs api-torch branch (out= on torch.matmul / torch.mul)")
def test_blitz_tensors_same_values_as_torch():
    check_same_values("blitz_tensors")
