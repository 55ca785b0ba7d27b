"""BinaryOpFuzzer: `x` as UnaryOpFuzzer's, and `y` of the same dims whose each size is x's or,
a fifth of the time, 1 (so the op broadcasts); both strided by x's steps."""

from __future__ import annotations

import kiln
from kiln.utils.benchmark.fuzzer import FuzzedParameter, FuzzedTensor, Fuzzer, ParameterAlias
from kiln.utils.benchmark.op_fuzzers import common
from kiln.utils.benchmark.op_fuzzers.unary import MAX_DIM_SIZE, POW_TWO_SIZES


class BinaryOpFuzzer(Fuzzer):
    def __init__(self, seed: int, dtype=kiln.float32, cuda: bool = False) -> None:
        y_sizes = [FuzzedParameter(f"y_k{i}", distribution={ParameterAlias(f"k{i}"): 0.8,
                                                             1: 0.2}, strict=True)
                   for i in range(3)]
        # y draws steps of its own, yet is sliced with x's (as torch's fuzzer is).
        steps = [FuzzedParameter(f"{name}_step_{i}", distribution=common.STEP_DISTRIBUTION)
                 for i in range(3) for name in ("x", "y")]
        x_steps = ("x_step_0", "x_step_1", "x_step_2")
        super().__init__(
            parameters=[common.dim_parameter("dim"),
                        common.size_parameters(MAX_DIM_SIZE, POW_TWO_SIZES, "pow2", 0.2),
                        y_sizes, steps, common.random_value()],
            tensors=[common.x_tensor(x_steps, "dim", dtype, cuda),
                     FuzzedTensor("y", size=("y_k0", "y_k1", "y_k2"), steps=x_steps,
                                  probability_contiguous=0.75,
                                  max_allocation_bytes=2 * 1024 ** 3, dim_parameter="dim",
                                  dtype=dtype, cuda=cuda)],
            seed=seed)
