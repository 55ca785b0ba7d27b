"""torch's own 2-D parallelism on the 2-D mesh tests' transformer: `python mesh2d_torch_ranks.py
OUT` spawns four processes (torch.multiprocessing, gloo) that train the torch twin of
`tp_workloads.Transformer` from kiln's initial weights with torch's parallelize_module on
mesh["tp"] and fully_shard on mesh["dp"] of a (2, 2) mesh (the cross-entropy on replicated
logits, and under loss_parallel on class-sharded ones), and with HSDP (fully_shard on the 2-D
mesh), on mesh2d_ranks' batches; the tp ranks of dp rank 0 also run loss_parallel alone on
mesh2d_ranks.lp_data. Each process writes OUT/torch_rank<r>.npz."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(model, batch: np.ndarray, steps: int, use_loss_parallel: bool) -> list[float]:
    from tests.distributed.tp_torch_ranks import lm_loss
    from torch.distributed.tensor.parallel import loss_parallel
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    tokens = torch.from_numpy(batch)
    for _ in range(steps):
        if use_loss_parallel:
            with loss_parallel():
                logits = model(tokens[:, :-1])
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                         tokens[:, 1:].reshape(-1))
                loss.backward()
        else:
            loss = lm_loss(model, tokens)
            loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _full_state(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().numpy() for k, v in full.items()}


def rank_main(rank: int, world: int, store: str, out: str, weights: dict) -> None:
    sys.path.insert(0, ROOT)
    import torch.distributed as tdist
    import torch.distributed.tensor.parallel as tp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from tests.distributed import mesh2d_ranks as R
    from tests.distributed import tp_workloads as W
    from tests.distributed.tp_torch_ranks import twin
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    results = {}
    mesh = init_device_mesh("cpu", (R.DP, 2), mesh_dim_names=("dp", "tp"))
    tp_mesh, dp_mesh = mesh["tp"], mesh["dp"]
    for name, lp in (("fsdp_tp", False), ("fsdp_tp_lp", True)):
        model = twin(weights)
        plans = W.tp_plans if lp else W.sp_plans        # as mesh2d_ranks._fsdp_tp
        top, _ = plans(tp, Shard, Replicate)
        if lp:
            top["output"] = tp.ColwiseParallel(use_local_output=False)
        tp.parallelize_module(model, tp_mesh, top)
        for layer in model.layers:
            tp.parallelize_module(layer, tp_mesh, plans(tp, Shard, Replicate)[1])
            fully_shard(layer, mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)
        batch = R.batches(R.DP)[dp_mesh.get_local_rank()]
        results[f"{name}_losses"] = np.array(_train(model, batch, W.STEPS, lp))
        for k, v in _full_state(model).items():
            results[f"{name}_state/{k}"] = v
    hsdp_mesh = init_device_mesh("cpu", (R.DP, 2), mesh_dim_names=("replicate", "shard"))
    model = twin(weights)
    for layer in model.layers:
        fully_shard(layer, mesh=hsdp_mesh)
    fully_shard(model, mesh=hsdp_mesh)
    results["hsdp_losses"] = np.array(_train(model, R.batches(2 * R.DP)[rank], W.STEPS, False))
    for k, v in _full_state(model).items():
        results[f"hsdp_state/{k}"] = v
    if dp_mesh.get_local_rank() == 0:        # loss_parallel alone, on the tp mesh of dp rank 0
        # unweighted only: with a class weight, torch 2.13's loss_parallel backward gathers the
        # weight at the ignored target (-100) and raises
        from torch.distributed.tensor.parallel import loss_parallel
        x, target, _ = R.lp_data()
        for reduction in ("mean", "sum", "none"):
            logits = distribute_tensor(torch.from_numpy(x), tp_mesh, [Shard(2)])
            logits.requires_grad_()
            with loss_parallel():
                loss = torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), torch.from_numpy(target).reshape(-1),
                    reduction=reduction)
                (loss.sum() if reduction == "none" else loss).backward()
            results[f"lp_{reduction}_plain_loss"] = loss.full_tensor().detach().numpy()
            results[f"lp_{reduction}_plain_grad"] = logits.grad.to_local().numpy()
    np.savez(os.path.join(out, f"torch_rank{rank}.npz"), **results)
    tdist.barrier()
    os._exit(0)     # no teardown: see fsdp_torch_ranks.py


def main() -> None:
    out = sys.argv[1]
    sys.path.insert(0, ROOT)
    from tests.distributed import tp_workloads as W
    import torch.multiprocessing as mp
    # forked, not spawned: four children importing torch afresh cost most of the run on a
    # 2-core host; the parent has started no threads of torch's that a fork could break
    import tests.distributed.mesh2d_ranks  # noqa: F401 - imported once, before the fork
    import tests.distributed.tp_torch_ranks  # noqa: F401
    mp.start_processes(rank_main, args=(4, os.path.join(out, "store"), out,
                                        W.state(W.transformer(0))),
                       nprocs=4, start_method="fork")


if __name__ == "__main__":
    main()
