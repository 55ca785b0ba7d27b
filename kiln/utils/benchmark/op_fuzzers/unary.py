"""UnaryOpFuzzer: one tensor `x` of 1 to 3 dims, 4K to 32M elements, sizes a power of two a
fifth of the time, sometimes non-contiguous or strided."""

from __future__ import annotations

import kiln
from kiln.utils.benchmark.fuzzer import Fuzzer
from kiln.utils.benchmark.op_fuzzers import common

MAX_DIM_SIZE = 16 * 1024 ** 2
POW_TWO_SIZES = tuple(2 ** i for i in range(4, 25))          # 16 .. MAX_DIM_SIZE


class UnaryOpFuzzer(Fuzzer):
    def __init__(self, seed: int, dtype=kiln.float32, cuda: bool = False) -> None:
        super().__init__(
            parameters=[common.dim_parameter("dim"),
                        common.size_parameters(MAX_DIM_SIZE, POW_TWO_SIZES, "pow2", 0.2),
                        common.step_parameters("x_step_"),
                        common.random_value()],
            tensors=[common.x_tensor(("x_step_0", "x_step_1", "x_step_2"), "dim", dtype, cuda)],
            seed=seed)
