"""Leaf tensors for the finite-difference gradient checks."""

import numpy as np

import kiln


def arg(*shape, low=-2.0, high=2.0, seed=0, away_from_int=False):
    """A float64 leaf that requires grad; `away_from_int` keeps values off the jumps of
    floor/round/mod, where finite differences are meaningless."""
    rng = np.random.default_rng(seed + 7 * len(shape))
    values = rng.uniform(low, high, size=shape)
    if away_from_int:
        values = np.floor(values) + rng.uniform(0.2, 0.4, size=shape)
    return kiln.tensor(values, dtype=kiln.float64, requires_grad=True)


def pos(*shape, seed=0):
    return arg(*shape, low=0.3, high=2.0, seed=seed)


def index(*values):
    return kiln.tensor(list(values), dtype=kiln.int64)
