"""UnaryOpSparseFuzzer: one sparse COO tensor `x` of 1 to 3 dims, 1 to 3 of them sparse,
density 0.1, 0.05 or 0.01, coalesced or not, sizes as UnaryOpFuzzer's."""

from __future__ import annotations

import kiln
from kiln.utils.benchmark.fuzzer import FuzzedParameter, Fuzzer
from kiln.utils.benchmark.op_fuzzers import common
from kiln.utils.benchmark.op_fuzzers.unary import MAX_DIM_SIZE, POW_TWO_SIZES
from kiln.utils.benchmark.sparse_fuzzer import FuzzedSparseTensor

__all__ = ["UnaryOpSparseFuzzer"]


def sparse_parameters() -> list:
    """The dims, sparse dims, density and coalescing the sparse op fuzzers share."""
    return [common.dim_parameter("dim_parameter"),
            FuzzedParameter("sparse_dim", distribution={1: 0.4, 2: 0.4, 3: 0.2}, strict=True)]


def sparse_tensor(name: str, size: tuple, dtype, cuda: bool) -> FuzzedSparseTensor:
    return FuzzedSparseTensor(name, size=size, dim_parameter="dim_parameter",
                              sparse_dim="sparse_dim", density="density",
                              coalesced="coalesced", min_elements=4 * 1024,
                              max_elements=32 * 1024 ** 2, dtype=dtype, cuda=cuda)


DENSITY = FuzzedParameter("density", distribution={0.1: 0.4, 0.05: 0.3, 0.01: 0.3})
COALESCED = FuzzedParameter("coalesced", distribution={True: 0.5, False: 0.5})


class UnaryOpSparseFuzzer(Fuzzer):
    def __init__(self, seed: int | None, dtype=None, cuda: bool = False) -> None:
        dtype = kiln.float32 if dtype is None else dtype
        super().__init__(
            parameters=[sparse_parameters(),
                        common.size_parameters(MAX_DIM_SIZE, POW_TWO_SIZES, "pow2", 0.2),
                        DENSITY, COALESCED, common.random_value()],
            tensors=[sparse_tensor("x", ("k0", "k1", "k2"), dtype, cuda)],
            seed=seed)
