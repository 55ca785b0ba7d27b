"""Shared hypothesis strategies: tensor shapes (with broadcasting, size-0 and size-1 dims), dims.

Sides are kept small (at most 4) so that every op's forward and backward run in microseconds;
hypothesis favours the edges (size 0, size 1, 0-d) on its own.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

MAX_DIMS = 3
MAX_SIDE = 4


def shapes(min_dims: int = 0, max_dims: int = MAX_DIMS, min_side: int = 0,
           max_side: int = MAX_SIDE) -> st.SearchStrategy[tuple]:
    """One tensor shape."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable(num: int, min_dims: int = 0, max_dims: int = MAX_DIMS, min_side: int = 0,
                  max_side: int = MAX_SIDE) -> st.SearchStrategy[tuple]:
    """`num` shapes that broadcast together (some dims 1 or missing in some of them)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num, min_dims=min_dims, max_dims=max_dims, min_side=min_side,
        max_side=max_side).map(lambda r: r.input_shapes)


def dim_of(shape: tuple) -> st.SearchStrategy[int]:
    """A valid dim index of `shape`, negative ones included (0-d tensors accept 0 and -1)."""
    n = max(len(shape), 1)
    return st.integers(-n, n - 1)


def dims_of(shape: tuple) -> st.SearchStrategy:
    """A reduction's `dim` argument: None, one dim, or a tuple of distinct dims."""
    if not shape:
        return st.sampled_from([None, 0, -1])
    n = len(shape)
    return st.one_of(st.none(), dim_of(shape),
                     st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)
                     .map(lambda ds: tuple(d - n if i % 2 else d for i, d in enumerate(ds))))


def permutation_of(ndim: int) -> st.SearchStrategy[tuple]:
    return st.permutations(list(range(ndim))).map(tuple)


seeds = st.integers(0, 2 ** 16)
