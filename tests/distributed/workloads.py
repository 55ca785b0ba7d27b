"""Models, data and training loops shared by the ranks (started by mpiexec) and the single-
process references the tests compare them with. Everything is float64 and seeded."""

from __future__ import annotations

import numpy as np

import kiln
import kiln.nn as nn
import kiln.nn.functional as F

STEPS = 20
GLOBAL_BATCH = 16


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3)).double()


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()


def seeded(build, seed: int) -> nn.Module:
    kiln.manual_seed(seed)
    return build()


def mlp_data(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Two batches, alternating; the targets are a fixed function of the inputs."""
    x = np.random.default_rng(100 + step % 2).normal(size=(GLOBAL_BATCH, 6))
    teacher = np.random.default_rng(99).normal(size=(6, 3))
    return x, np.tanh(x @ teacher)


def cnn_data(step: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(200 + step % 2).normal(size=(GLOBAL_BATCH, 2, 8, 8))
    return x, (x[:, 0, :4].mean((1, 2)) > 0).astype(np.int64) + (x[:, 1].mean((1, 2)) > 0)


def shard(array: np.ndarray, rank: int, world: int) -> np.ndarray:
    n = len(array) // world
    return array[rank * n:(rank + 1) * n]


def mlp_step(model, opt, x, y) -> kiln.Tensor:
    opt.zero_grad()
    loss = F.mse_loss(model(kiln.tensor(x)), kiln.tensor(y))
    loss.backward()
    opt.step()
    return loss


def cnn_step(model, opt, x, y) -> kiln.Tensor:
    opt.zero_grad()
    loss = F.cross_entropy(model(kiln.tensor(x)), kiln.tensor(y))
    loss.backward()
    opt.step()
    return loss


def train_mlp(model, rank: int = 0, world: int = 1, steps: int = STEPS) -> list[float]:
    opt = kiln.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for s in range(steps):
        x, y = mlp_data(s)
        losses.append(float(mlp_step(model, opt, shard(x, rank, world), shard(y, rank, world))))
    return losses


def train_cnn(model, rank: int = 0, world: int = 1, steps: int = STEPS) -> list[float]:
    opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for s in range(steps):
        x, y = cnn_data(s)
        losses.append(float(cnn_step(model, opt, shard(x, rank, world), shard(y, rank, world))))
    return losses


def state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
