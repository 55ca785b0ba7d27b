"""SpectralOpFuzzer: one float64 tensor `x` of 1 to 3 dims (`ndim`) whose sizes are, with
`probability_regular`, regular numbers (only factors 2, 3 and 5: the fast FFT sizes)."""

from __future__ import annotations

import kiln
from kiln.utils.benchmark.fuzzer import Fuzzer
from kiln.utils.benchmark.op_fuzzers import common

__all__ = ["SpectralOpFuzzer"]

MIN_DIM_SIZE = common.MIN_DIM_SIZE
MAX_DIM_SIZE = 16 * 1024


def _regular_sizes(low: int, high: int) -> list[int]:
    """The numbers in (low, high] with no prime factor other than 2, 3 and 5, ascending."""
    sizes = {2 ** a * 3 ** b * 5 ** c for a in range(high.bit_length())
             for b in range(12) for c in range(8)}
    return sorted(n for n in sizes if low < n <= high)


REGULAR_SIZES = _regular_sizes(MIN_DIM_SIZE, MAX_DIM_SIZE)


class SpectralOpFuzzer(Fuzzer):
    def __init__(self, *, seed: int, dtype=kiln.float64, cuda: bool = False,
                 probability_regular: float = 1.0) -> None:
        super().__init__(
            parameters=[common.dim_parameter("ndim"),
                        common.size_parameters(MAX_DIM_SIZE, tuple(REGULAR_SIZES), "regular",
                                               probability_regular),
                        common.step_parameters("step_")],
            tensors=[common.x_tensor(("step_0", "step_1", "step_2"), "ndim", dtype, cuda)],
            seed=seed)
