"""A PyTorch script (torch's names only): DDP + ZeroRedundancyOptimizer(Adam) + StepLR under
Join with uneven inputs, started with mp.spawn over gloo, then a consolidated state dict.
test_zero_join.py runs it under torch and under `kiln run` and compares what it writes to
OUT/script_rank<r>.npz."""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.join import Join
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP


def worker(rank: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,
                            world_size=world)
    model = torch.nn.Sequential(torch.nn.Linear(4, 10), torch.nn.Tanh(),
                                torch.nn.Linear(10, 2)).double()
    weights = np.random.default_rng(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(weights.normal(size=tuple(p.shape)) * 0.5))
    model = DDP(model)
    model.register_comm_hook(None, default_hooks.allreduce_hook)
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    losses = []
    with Join([model, opt]):
        for step in range(3 + 2 * rank):            # rank 0: 3 batches, rank 1: 5
            data = np.random.default_rng(10 * step + rank)
            x, y = torch.from_numpy(data.normal(size=(4, 4))), torch.from_numpy(
                data.normal(size=(4, 2)))
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    opt.consolidate_state_dict(to=0)
    saved = {"losses": np.array(losses)}
    for name, p in model.module.named_parameters():
        saved[f"param/{name}"] = p.detach().numpy().copy()
    if rank == 0:
        state = opt.state_dict()
        for index, entry in state["state"].items():
            for key, value in entry.items():
                saved[f"state/{index}/{key}"] = value.numpy()
        saved["lr"] = np.array(state["param_groups"][0]["lr"])
    np.savez(os.path.join(out, f"script_rank{rank}.npz"), **saved)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1]), nprocs=2)
