"""torch's own DDP + ZeroRedundancyOptimizer, Join and fp16_compress_hook on the twin of
`zero_workloads.mlp`: `python zero_torch_ranks.py OUT` spawns two processes
(torch.multiprocessing, gloo) that run what `zero_ranks.py` runs in kiln, from kiln's initial
weights and the same batches, and write OUT/torch_rank<r>.npz."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch


def twin(weights: dict) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 7),
                                torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model


def bn_twin(weights: dict) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.BatchNorm1d(12),
                                torch.nn.Tanh(), torch.nn.Linear(12, 3)).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model


def rank_main(rank: int, store: str, out: str, weights: dict, batches: list, cfg: dict) -> None:
    import torch.distributed as tdist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.algorithms.join import Join
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    result = {}

    def step(model, opt, s):
        x, y = batches[s]
        n = len(x) // 2
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(torch.from_numpy(x[rank * n:(rank + 1) * n])),
                                            torch.from_numpy(y[rank * n:(rank + 1) * n]))
        loss.backward()
        opt.step()
        return loss.item()

    def zero(model):
        opt = ZeroRedundancyOptimizer(model.parameters(), torch.optim.Adam, lr=cfg["lr"])
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["step_size"],
                                                    gamma=cfg["gamma"])

    def save(prefix, model):
        for k, v in model.module.state_dict().items():
            result[f"{prefix}/{k}"] = v.detach().numpy().copy()

    model = DDP(twin(weights))
    opt, sched = zero(model)
    result["zero/owners"] = np.array([opt._param_to_rank[p] for p in model.parameters()])
    losses = []
    for s in range(cfg["steps"]):
        losses.append(step(model, opt, s))
        sched.step()
    result["zero/losses"] = np.array(losses)
    save("zero/param", model)
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        full = opt.state_dict()
        for index, entry in full["state"].items():
            for key, value in entry.items():
                result[f"zero/state/{index}/{key}"] = value.numpy()
        group = full["param_groups"][0]
        result["zero/group_params"] = np.array(group["params"])
        result["zero/group_keys"] = np.array(sorted(group))
        result["zero/group_lr"] = np.array([group["lr"], group["initial_lr"]])

    model = DDP(twin(weights))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    with model.join():
        for s in range(cfg["join_batches"][rank]):
            losses.append(step(model, opt, s))
    result["join/losses"] = np.array(losses)
    save("join/param", model)

    model = DDP(twin(weights))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with model.join(divide_by_initial_world_size=False):
        for s in range(cfg["join_batches"][rank]):
            step(model, opt, s)
    save("join_running/param", model)

    model = DDP(twin(weights))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        with model.join(throw_on_early_termination=True):
            for s in range(cfg["join_batches"][rank]):
                step(model, opt, s)
    except RuntimeError as exc:
        result["join_throw/error"] = np.array(str(exc))

    model = DDP(bn_twin(cfg["bn_weights"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with model.join():
        for s in range(cfg["join_batches"][rank]):
            step(model, opt, s)
    result.update({f"join_bn/param/{k}": v.detach().numpy().copy()
                   for k, v in model.module.state_dict().items()})

    model = DDP(twin(weights))
    opt, _ = zero(model)
    with Join([model, opt]):
        for s in range(cfg["join_batches"][rank]):
            step(model, opt, s)
    save("join_zero/param", model)

    model = DDP(twin(weights))
    model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for s in range(3):
        step(model, opt, s)
    save("hooks/fp16", model)

    np.savez(os.path.join(out, f"torch_rank{rank}.npz"), **result)
    tdist.barrier()
    # Both ranks have written their files. Leave without teardown: gloo's worker threads can
    # abort the process while the process group and the interpreter are destroyed.
    os._exit(0)


def main() -> None:
    out = sys.argv[1]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))
    from tests.distributed import zero_workloads as W      # kiln: in this parent only
    import torch.multiprocessing as mp
    weights = W.state(W.seeded_mlp())
    batches = [W.data(s) for s in range(W.STEPS)]
    cfg = {"lr": W.LR, "step_size": W.STEP_SIZE, "gamma": W.GAMMA, "steps": W.STEPS,
           "join_batches": W.JOIN_BATCHES}
    import kiln
    kiln.manual_seed(4)
    cfg["bn_weights"] = W.state(W.bn_mlp())
    mp.spawn(rank_main, args=(os.path.join(out, "store"), out, weights, batches, cfg), nprocs=2)


if __name__ == "__main__":
    main()
