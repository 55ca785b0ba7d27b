"""The parameters the op fuzzers share: a dimensionality, per-dim sizes that mix any integer
with a favoured set (powers of two, or FFT-friendly sizes), and per-dim slicing steps."""

from __future__ import annotations

from kiln.utils.benchmark.fuzzer import FuzzedParameter, FuzzedTensor, ParameterAlias

MIN_DIM_SIZE = 16
# Strides other than 1 are rarer, and the longer the rarer: most benchmarks are contiguous.
STEP_DISTRIBUTION = {1: 0.8, 2: 0.06, 4: 0.06, 8: 0.04, 16: 0.04}


def dim_parameter(name: str) -> FuzzedParameter:
    """1-, 2- or 3-d, 2-d the most often; strict, so size limits do not favour fewer dims."""
    return FuzzedParameter(name, distribution={1: 0.3, 2: 0.4, 3: 0.3}, strict=True)


def size_parameters(max_size: int, favoured: tuple[int, ...], favoured_name: str,
                    probability_favoured: float) -> list[FuzzedParameter]:
    """`k0..k2`: each is `k_any_i` (loguniform over all integers) or, with
    `probability_favoured`, `k_{favoured_name}_i` (uniform over `favoured`)."""
    any_sizes = [FuzzedParameter(f"k_any_{i}", minval=MIN_DIM_SIZE, maxval=max_size,
                                 distribution="loguniform") for i in range(3)]
    favoured_sizes = [FuzzedParameter(f"k_{favoured_name}_{i}",
                                      distribution={n: 1 / len(favoured) for n in favoured})
                      for i in range(3)]
    chosen = [FuzzedParameter(f"k{i}", distribution={
        ParameterAlias(f"k_any_{i}"): 1 - probability_favoured,
        ParameterAlias(f"k_{favoured_name}_{i}"): probability_favoured}, strict=True)
        for i in range(3)]
    return any_sizes + favoured_sizes + chosen


def step_parameters(prefix: str) -> list[FuzzedParameter]:
    return [FuzzedParameter(f"{prefix}{i}", distribution=STEP_DISTRIBUTION) for i in range(3)]


def random_value() -> FuzzedParameter:
    """Entropy a benchmark can seed its own generators from, reproducibly."""
    return FuzzedParameter("random_value", minval=0, maxval=2 ** 32 - 1, distribution="uniform")


def x_tensor(steps: tuple[str, str, str], dim_parameter: str, dtype, cuda: bool) -> FuzzedTensor:
    """The op fuzzers' `x`: sizes k0..k2, 4K to 32M elements, contiguous 3/4 of the time."""
    return FuzzedTensor("x", size=("k0", "k1", "k2"), steps=steps, probability_contiguous=0.75,
                        min_elements=4 * 1024, max_elements=32 * 1024 ** 2,
                        max_allocation_bytes=2 * 1024 ** 3, dim_parameter=dim_parameter,
                        dtype=dtype, cuda=cuda)
