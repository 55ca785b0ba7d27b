"""DDP started the way PyTorch's DDP tutorial starts it: `python spawn_ddp.py LIB OUT PORT`
(LIB: kiln or torch) runs mp.spawn(main, nprocs=2); each process sets MASTER_ADDR/MASTER_PORT,
calls init_process_group("gloo", rank=rank, world_size=2), trains a small float64 MLP wrapped
in DDP for 3 SGD steps on its half of fixed batches, and rank 0 saves the final state dict to
OUT/LIB.npz (with the name of the library that ran it). The same code runs under both
libraries, and as a PyTorch script under `kiln run`; `train` also gives the single-process
reference on the whole batches."""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np

WORLD, STEPS, BATCH = 2, 3, 8


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((BATCH, 5)), rng.standard_normal((BATCH, 3)))
            for _ in range(STEPS)]


def make_model(torch):
    rng = np.random.default_rng(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model = model.double()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.tensor(0.4 * rng.standard_normal(s))
                           for k, s in shapes.items()})
    return model


def train(torch, model, steps: list[tuple[np.ndarray, np.ndarray]]) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in steps:
        loss = torch.nn.functional.mse_loss(model(torch.tensor(x)), torch.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(rank: int, world_size: int, lib: str, out: str, port: str) -> None:
    torch = importlib.import_module(lib)
    dist = importlib.import_module(lib + ".distributed")
    DDP = importlib.import_module(lib + ".nn.parallel").DistributedDataParallel
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = port
    dist.init_process_group(backend="gloo", rank=rank, world_size=world_size)
    model = DDP(make_model(torch))
    part = BATCH // world_size
    mine = slice(rank * part, (rank + 1) * part)
    train(torch, model, [(x[mine], y[mine]) for x, y in batches()])
    if rank == 0:
        np.savez(os.path.join(out, f"{lib}.npz"), _library=np.array(torch.__name__),
                 **{k: v.detach().numpy() for k, v in model.module.state_dict().items()})
    if torch.__name__ == "torch":     # torch's gloo can abort in teardown: leave once all done
        dist.barrier()
        os._exit(0)
    dist.destroy_process_group()


if __name__ == "__main__":
    lib, out, port = sys.argv[1:4]
    mp = importlib.import_module(lib + ".multiprocessing")
    mp.spawn(main, args=(WORLD, lib, out, port), nprocs=WORLD)
