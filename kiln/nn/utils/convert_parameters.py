"""Flatten parameters into one vector and write a vector back into them."""

from __future__ import annotations

from typing import Iterable

import kiln
from kiln import Tensor


def parameters_to_vector(parameters: Iterable[Tensor]) -> Tensor:
    return kiln.cat([p.reshape(-1) for p in parameters])


def vector_to_parameters(vec: Tensor, parameters: Iterable[Tensor]) -> None:
    """Copy consecutive slices of `vec` into the parameters (their data, outside autograd)."""
    if not isinstance(vec, Tensor):
        raise TypeError(f"expected kiln.Tensor, but got: {type(vec).__name__}")
    at = 0
    for p in parameters:
        n = p.numel()
        p.data = vec[at:at + n].reshape(tuple(p.shape)).detach().clone()
        at += n
