"""BinaryOpSparseFuzzer: sparse `x` and `y` as UnaryOpSparseFuzzer's `x`, of one shape."""

from __future__ import annotations

import kiln
from kiln.utils.benchmark.fuzzer import FuzzedParameter, Fuzzer, ParameterAlias
from kiln.utils.benchmark.op_fuzzers import common
from kiln.utils.benchmark.op_fuzzers.sparse_unary import (COALESCED, DENSITY,
                                                          sparse_parameters, sparse_tensor)
from kiln.utils.benchmark.op_fuzzers.unary import MAX_DIM_SIZE, POW_TWO_SIZES


class BinaryOpSparseFuzzer(Fuzzer):
    def __init__(self, seed: int | None, dtype=kiln.float32, cuda: bool = False) -> None:
        y_sizes = [FuzzedParameter(f"y_k{i}", distribution={ParameterAlias(f"k{i}"): 1.0},
                                   strict=True) for i in range(3)]
        super().__init__(
            parameters=[sparse_parameters(),
                        common.size_parameters(MAX_DIM_SIZE, POW_TWO_SIZES, "pow2", 0.2),
                        y_sizes, DENSITY, COALESCED, common.random_value()],
            tensors=[sparse_tensor("x", ("k0", "k1", "k2"), dtype, cuda),
                     sparse_tensor("y", ("y_k0", "y_k1", "y_k2"), dtype, cuda)],
            seed=seed)
