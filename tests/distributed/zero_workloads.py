"""The model, data and schedule shared by the ZeroRedundancyOptimizer / Join / comm-hook ranks
(kiln under mpiexec, torch under mp.spawn) and the single-process references. float64."""

from __future__ import annotations

import numpy as np

import kiln
import kiln.nn as nn

STEPS = 5
BATCH = 8                   # global batch; each of the 2 ranks takes half
LR, STEP_SIZE, GAMMA = 0.05, 2, 0.5
JOIN_BATCHES = (3, 5)       # batches rank 0 and rank 1 get in the uneven-input runs


def mlp() -> nn.Module:
    """Parameters of 6 different sizes, so the ZeRO partition puts several on each rank."""
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 7), nn.Tanh(),
                         nn.Linear(7, 3)).double()


def bn_mlp() -> nn.Module:
    """With BatchNorm buffers, which DDP broadcasts before each forward."""
    return nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Tanh(),
                         nn.Linear(12, 3)).double()


def seeded_mlp(seed: int = 3) -> nn.Module:
    kiln.manual_seed(seed)
    return mlp()


def data(step: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(300 + step).normal(size=(BATCH, 5))
    teacher = np.random.default_rng(299).normal(size=(5, 3))
    return x, np.tanh(x @ teacher)


def half(array: np.ndarray, rank: int) -> np.ndarray:
    n = len(array) // 2
    return array[rank * n:(rank + 1) * n]


def state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
