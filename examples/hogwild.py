"""Hogwild!: several processes train one model in shared memory, without locks.

The model's parameters are moved to shared memory (`model.share_memory()`); each process
gets the same model through kiln.multiprocessing (its tensors travel as shared-memory handles,
not copies), and its SGD steps write straight into the memory every process reads.

    python examples/hogwild.py            # 4 processes
"""

import os

import kiln
import kiln.multiprocessing as mp
import kiln.nn as nn
import kiln.nn.functional as F

QUICK = os.environ.get("KILN_EXAMPLE_QUICK") == "1"
PROCESSES = 2 if QUICK else 4
STEPS = 100 if QUICK else 500


def make_data(n: int = 1024):
    kiln.manual_seed(0)
    x = kiln.randn(n, 8)
    teacher = kiln.randn(8, 1) / 8 ** 0.5            # x @ teacher ~ N(0, 1): sin is learnable
    return x, kiln.sin(x @ teacher) + 0.05 * kiln.randn(n, 1)


def train(rank: int, model: nn.Module, x: kiln.Tensor, y: kiln.Tensor) -> None:
    kiln.set_num_threads(1)
    kiln.manual_seed(100 + rank)
    opt = kiln.optim.SGD(model.parameters(), lr=0.2)
    shard = kiln.arange(rank, len(x), PROCESSES)       # each process its own rows
    for _ in range(STEPS):
        idx = shard[kiln.randint(0, len(shard), (32,))]
        opt.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()                                      # writes into the shared parameters


def main() -> None:
    x, y = make_data()
    kiln.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    model.share_memory()
    with kiln.no_grad():
        before = F.mse_loss(model(x), y).item()
    mp.spawn(train, args=(model, x, y), nprocs=PROCESSES)
    with kiln.no_grad():       # the parent's model is the one the processes trained
        after = F.mse_loss(model(x), y).item()
    print(f"processes {PROCESSES}")
    print(f"loss before {before:.4f}")
    print(f"loss after {after:.4f}")


if __name__ == "__main__":
    main()
