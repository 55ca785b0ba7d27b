"""The 2-D mesh tests' rank program: `mpiexec -n 4 python mesh2d_ranks.py OUT` checks the mesh
API and its groups, trains the TP tests' transformer with FSDP over tensor parallelism
(fsdp_tp_example's pattern; the plain TP plan with loss_parallel; bfloat16 mixed precision;
fake cuda) and with HSDP on (2, 2) meshes; `mpiexec -n 2` runs loss_parallel alone. Each rank
writes OUT/rank<r>_of<n>.npz (a section that raised leaves `error:<section>`). Also holds the
batches the single-process references and torch's run use."""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.distributed import tp_workloads as W  # noqa: E402

DP = 2                  # the (dp, tp) and (replicate, shard) meshes are (2, 2)


def batches(n: int) -> np.ndarray:
    """n token batches, one per data-parallel rank (ids in both tp halves of the vocab)."""
    return np.random.default_rng(21).integers(0, W.VOCAB, (n, W.BATCH, W.SEQ + 1))


def lp_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """loss_parallel's logits (2, 3, VOCAB) (classes split 6 + 5), targets (one ignored) and
    class weights."""
    rng = np.random.default_rng(17)
    target = rng.integers(0, W.VOCAB, (2, 3))
    target[1, 2] = -100
    return rng.normal(size=(2, 3, W.VOCAB)), target, rng.uniform(0.5, 2.0, W.VOCAB)


def _fsdp_tp(kiln, out: dict, name: str, use_loss_parallel: bool, dp: int = DP,
             out_dir: str = "") -> None:
    import kiln.distributed.tensor.parallel as tp
    import kiln.nn as nn
    import kiln.nn.functional as F
    import kiln.distributed.checkpoint as dcp
    from kiln.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict)
    from kiln.distributed.fsdp import fully_shard
    from kiln.distributed.tensor import DTensor, Replicate, Shard, init_device_mesh
    world = kiln.distributed.get_world_size()
    mesh = init_device_mesh("cpu", (dp, world // dp), mesh_dim_names=("dp", "tp"))
    tp_mesh, dp_mesh = mesh["tp"], mesh["dp"]
    model = W.transformer(0)
    # with loss_parallel: the plain TP plan (the norms stay plain parameters, sharded by FSDP
    # alone next to the 2-D ones), class-sharded logits handed to the loss as they are
    plans = W.tp_plans if use_loss_parallel else W.sp_plans
    top, _ = plans(tp, Shard, Replicate)
    if use_loss_parallel:
        top["output"] = tp.ColwiseParallel(use_local_output=False)
    tp.parallelize_module(model, tp_mesh, top)
    for layer in model.layers:
        tp.parallelize_module(layer, tp_mesh, plans(tp, Shard, Replicate)[1])
        fully_shard(layer, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
    out[f"{name}_placements"] = np.array(
        [f"{k}:{','.join(map(str, p.placements))}:{list(p.shape)}"
         for k, p in model.named_parameters()])
    out[f"{name}_all_dtensor"] = all(isinstance(p, DTensor) for p in model.parameters())
    opt = W.adam(model)
    batch = batches(dp)[dp_mesh.get_local_rank()]      # the same batch on both tp ranks
    losses = []
    for _ in range(W.STEPS):
        if use_loss_parallel:
            with tp.loss_parallel():
                logits = model(kiln.tensor(batch[:, :-1]))
                out[f"{name}_logits"] = np.array(
                    [type(logits).__name__, str(logits.placements), str(list(logits.shape))])
                loss = F.cross_entropy(logits.flatten(0, 1),
                                       kiln.tensor(batch[:, 1:]).reshape(-1))
                loss.backward()
        else:
            loss = W.lm_loss(model, batch)
            loss.backward()
        if not losses:      # the whole model's gradient norm, from the 2-D gradient pieces
            out[f"{name}_grad_norm"] = float(nn.utils.clip_grad_norm_(model.parameters(), 1e9))
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    out[f"{name}_losses"] = np.array(losses)
    out[f"{name}_full_tensor/output.weight"] = model.output.weight.full_tensor().numpy()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    for k, v in full.items():
        out[f"{name}_state/{k}"] = v.numpy()
    optim = get_optimizer_state_dict(model, opt,
                                     options=StateDictOptions(full_state_dict=True))
    for k, v in optim["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            out[f"{name}_optim/{k}.{moment}"] = v[moment].numpy()
    if not use_loss_parallel:   # a one-process checkpoint loads into the 2-D pieces and back
        try:
            dcp.save(model.state_dict(), checkpoint_id=os.path.join(out_dir, "dcp"))
            out[f"{name}_dcp_error"] = np.array("no error")
        except NotImplementedError as exc:
            out[f"{name}_dcp_error"] = np.array(str(exc))
        other = {k: kiln.tensor(v) for k, v in W.state(W.transformer(7)).items()}
        set_model_state_dict(model, other, options=StateDictOptions(full_state_dict=True))
        out[f"{name}_reloaded_local/output.weight"] = model.output.weight.to_local().numpy()
        again = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        for k, v in again.items():
            out[f"{name}_reloaded/{k}"] = v.numpy()


def _bfloat16(kiln, out: dict) -> None:
    """FSDP over TP with MixedPrecisionPolicy(bfloat16 params, float32 reduce): one step's loss
    and the gathered float64 gradient shards, to compare with float64 at bfloat16's precision."""
    import kiln.distributed.tensor.parallel as tp
    from kiln.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from kiln.distributed.tensor import Replicate, Shard, init_device_mesh
    mesh = init_device_mesh("cpu", (DP, 2), mesh_dim_names=("dp", "tp"))
    model = W.transformer(0)
    top, _ = W.sp_plans(tp, Shard, Replicate)
    tp.parallelize_module(model, mesh["tp"], top)
    policy = MixedPrecisionPolicy(param_dtype=kiln.bfloat16, reduce_dtype=kiln.float32)
    for layer in model.layers:
        tp.parallelize_module(layer, mesh["tp"], W.sp_plans(tp, Shard, Replicate)[1])
        fully_shard(layer, mesh=mesh["dp"], mp_policy=policy)
    fully_shard(model, mesh=mesh["dp"], mp_policy=policy)
    loss = W.lm_loss(model, batches(DP)[mesh.get_local_rank("dp")])
    loss.backward()
    out["bf16_loss"] = np.array([float(loss)])
    out["bf16_dtypes"] = np.array([str(loss.dtype), str(model.output.weight.grad.dtype)])
    for k, p in model.named_parameters():
        out[f"bf16_grad/{k}"] = p.grad.full_tensor().numpy()


def _hsdp(kiln, out: dict) -> None:
    import kiln.distributed as dist
    import kiln.nn as nn
    from kiln.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from kiln.distributed.fsdp import fully_shard
    from kiln.distributed.tensor import init_device_mesh
    mesh = init_device_mesh("cpu", (DP, 2), mesh_dim_names=("replicate", "shard"))
    model = W.transformer(0)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    out["hsdp_placements"] = np.array(
        [f"{k}:{','.join(map(str, p.placements))}:{list(p.shape)}"
         for k, p in model.named_parameters()])
    opt = W.adam(model)
    batch = batches(2 * DP)[dist.get_rank()]          # every rank its own batch
    losses = []
    for _ in range(W.STEPS):
        loss = W.lm_loss(model, batch)
        loss.backward()
        if not losses:
            out["hsdp_grad_norm"] = float(nn.utils.clip_grad_norm_(model.parameters(), 1e9))
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    out["hsdp_losses"] = np.array(losses)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    for k, v in full.items():
        out[f"hsdp_state/{k}"] = v.numpy()


def _loss_parallel(kiln, out: dict) -> None:
    import kiln.nn as nn
    import kiln.nn.functional as F
    from kiln.distributed.tensor import Shard, distribute_tensor, init_device_mesh
    from kiln.distributed.tensor.parallel import loss_parallel
    mesh = init_device_mesh("cpu", (2,))
    x, target, weight = lp_data()
    for reduction in ("mean", "sum", "none"):
        for weighted in (False, True):
            name = f"lp_{reduction}_{'w' if weighted else 'plain'}"
            logits = distribute_tensor(kiln.tensor(x), mesh, [Shard(2)])
            logits.requires_grad_(True)
            w = kiln.tensor(weight) if weighted else None
            with loss_parallel():
                if reduction == "mean" and weighted:    # the module form as well
                    loss = nn.CrossEntropyLoss(weight=w)(logits.flatten(0, 1),
                                                         kiln.tensor(target).reshape(-1))
                else:
                    loss = F.cross_entropy(logits.flatten(0, 1), kiln.tensor(target).reshape(-1),
                                           weight=w, reduction=reduction)
                out[f"{name}_placements"] = np.array(str(loss.placements))
                (loss.sum() if reduction == "none" else loss).backward()
            out[f"{name}_loss"] = loss.detach().numpy()
            out[f"{name}_grad"] = logits.grad.numpy()
    # 2-d logits (N, C) sharded on dim 1, and plain tensors computed as usual inside the context
    flat = distribute_tensor(kiln.tensor(x.reshape(-1, W.VOCAB)), mesh, [Shard(1)])
    flat.requires_grad_(True)
    with loss_parallel():
        loss = F.cross_entropy(flat, kiln.tensor(target).reshape(-1))
        loss.backward()
        plain = F.cross_entropy(kiln.tensor(x.reshape(-1, W.VOCAB)),
                                kiln.tensor(target).reshape(-1))
    out["lp_2d_loss"], out["lp_2d_grad"] = loss.detach().numpy(), flat.grad.numpy()
    out["lp_plain_loss"] = plain.numpy()
    # torchtitan's spelling: the logits cast to float32 first (a cast keeps a DTensor sharded)
    cast = distribute_tensor(kiln.tensor(x.reshape(-1, W.VOCAB)), mesh, [Shard(1)])
    cast.requires_grad_(True)
    with loss_parallel():
        loss = F.cross_entropy(cast.float(), kiln.tensor(target).reshape(-1))
        loss.backward()
    out["lp_cast_type"] = np.array(type(cast.float()).__name__)
    out["lp_cast_loss"], out["lp_cast_grad"] = loss.detach().double().numpy(), cast.grad.numpy()
    errors = []
    with loss_parallel():
        for call in (lambda: F.cross_entropy(flat, kiln.tensor(target).reshape(-1),
                                             label_smoothing=0.1),
                     lambda: F.cross_entropy(distribute_tensor(kiln.tensor(x.reshape(
                         -1, W.VOCAB)), mesh, [Shard(0)]), kiln.tensor(target).reshape(-1)),
                     lambda: F.cross_entropy(flat, kiln.tensor(target))):
            try:
                call()
                errors.append("no error")
            except Exception as exc:                    # noqa: BLE001 - recorded for the test
                errors.append(f"{type(exc).__name__}: {exc}")
    out["lp_errors"] = np.array(errors)


def _cuda_fake(kiln, out: dict) -> None:
    """FSDP over tensor parallelism on cuda tensors through the mesh groups' NCCL backends,
    over the stand-in NCCL (fake_nccl.py) and fake CUDA (tests/fake_cuda.py): checks that the
    sub-groups' collectives go through their own NCCL communicators. Runs last: the fake CUDA
    patches kiln's device module for the rest of the process."""
    import tests.fake_cuda
    tests.fake_cuda.install()
    import kiln.distributed.tensor.parallel as tp
    from kiln.distributed import process_group as pg
    from kiln.distributed.fsdp import fully_shard
    from kiln.distributed.nccl_backend import NCCLBackend
    from kiln.distributed.tensor import Replicate, Shard, init_device_mesh
    from tests.distributed.fake_nccl import FakeNccl, FakeNcclCommunicator, fake_cupy
    mesh = init_device_mesh("cuda", (DP, 2), mesh_dim_names=("dp", "tp"))
    calls = {}
    for name, group in (("world", pg._WORLD), ("dp", mesh.get_group("dp")),
                        ("tp", mesh.get_group("tp"))):
        # what a group's first cuda collective would make with cupy.cuda.nccl
        nccl = calls[name] = FakeNccl()
        group.nccl = NCCLBackend(FakeNcclCommunicator(group.comm.Dup(), nccl), group.rank,
                                 group.size, nccl, fake_cupy)
    model = W.transformer(0).cuda()
    top, block = W.sp_plans(tp, Shard, Replicate)
    tp.parallelize_module(model, mesh["tp"], top)
    for layer in model.layers:
        tp.parallelize_module(layer, mesh["tp"], W.sp_plans(tp, Shard, Replicate)[1])
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    opt = W.adam(model)
    batch = batches(DP)[mesh.get_local_rank("dp")]
    losses = []
    for _ in range(2):
        logits = model(kiln.tensor(batch[:, :-1]).cuda())
        loss = kiln.nn.functional.cross_entropy(
            logits.reshape(-1, W.VOCAB), kiln.tensor(batch[:, 1:]).cuda().reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    out["cuda_losses"] = np.array(losses)
    out["cuda_device"] = np.array(str(model.output.weight.device))
    for name, nccl in calls.items():
        out[f"cuda_nccl_calls/{name}"] = np.array(" ".join(sorted(set(nccl.calls))))


def _groups(kiln, out: dict) -> None:
    """The mesh API, collectives on its groups, new_group and DTensors on a 2-D mesh."""
    import kiln.distributed as dist
    import kiln.distributed.tensor.parallel as tp
    from kiln.distributed.fsdp import fully_shard
    from kiln.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
    from kiln.distributed.tensor import init_device_mesh
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    tp_mesh, dp_mesh = mesh["tp"], mesh["dp"]
    out["g_mesh"] = np.array([mesh.shape, [mesh.ndim, mesh.size()], [mesh.size(1), mesh.size("dp")],
                              mesh.get_coordinate(),
                              [mesh.get_local_rank("dp"), mesh.get_local_rank(1)],
                              tp_mesh.mesh, dp_mesh.mesh, [tp_mesh.ndim, dp_mesh.size()],
                              [tp_mesh.get_local_rank(), dp_mesh.get_local_rank()]])
    out["g_names"] = np.array([str(tp_mesh.mesh_dim_names), str(mesh["tp", "dp"].mesh),
                               str(mesh["dp", "tp"] is mesh), repr(mesh)])
    out["g_group_ranks"] = np.array([dist.get_process_group_ranks(mesh.get_group("tp")),
                                     dist.get_process_group_ranks(mesh.get_group(0)),
                                     [dist.get_rank(tp_mesh.get_group()),
                                      dist.get_world_size(dp_mesh.get_group())]])
    value = kiln.tensor([float(rank + 1)])
    dist.all_reduce(value, group=tp_mesh.get_group())
    root = kiln.tensor([float(10 * rank)])
    dist.broadcast(root, src=dp_mesh.mesh[1], group=dp_mesh.get_group())    # a global rank
    gathered = kiln.zeros(2)
    dist.all_gather_into_tensor(gathered, kiln.tensor([float(rank)]), group=dp_mesh.get_group())
    scattered = kiln.zeros(1)
    dist.reduce_scatter_tensor(scattered, kiln.tensor([1.0, 2.0]) * (rank + 1),
                               group=tp_mesh.get_group())
    out["g_collectives"] = np.concatenate([value.numpy(), root.numpy(), gathered.numpy(),
                                           scattered.numpy()])
    ends = dist.new_group([3, 0])           # every rank creates it; only 0 and 3 are members
    member = ends is not dist.GroupMember.NON_GROUP_MEMBER
    total = kiln.tensor([float(rank)])
    if member:
        dist.all_reduce(total, group=ends)
    out["g_new_group"] = np.array([int(member), dist.get_rank(ends), dist.get_world_size(ends),
                                   int(total.item())])
    errors = []
    for call in (lambda: dist.new_group([0, 1] if rank == 0 else [0, 2]),
                 lambda: mesh.get_local_rank(),
                 lambda: mesh["pp"],
                 lambda: init_device_mesh("cpu", (3, 2)),
                 lambda: tp.parallelize_module(W.mlp(), mesh, {"in_proj": tp.ColwiseParallel()}),
                 lambda: fully_shard(W.mlp(), mesh=init_device_mesh("cpu", (2, 2, 1))),
                 lambda: fully_shard(tp.parallelize_module(
                     W.mlp(), tp_mesh, {"in_proj": tp.ColwiseParallel()}), mesh=mesh),
                 lambda: fully_shard(tp.parallelize_module(
                     W.mlp(), tp_mesh, {"in_proj": tp.ColwiseParallel()}))):
        try:
            call()
            errors.append("no error")
        except Exception as exc:                        # noqa: BLE001 - recorded for the test
            errors.append(f"{type(exc).__name__}: {exc}")
    out["g_errors"] = np.array(errors)
    whole = kiln.arange(30, dtype=kiln.float64).reshape(5, 6)
    for i, placements in enumerate([(Shard(0), Shard(1)), (Shard(1), Shard(0)),
                                    (Replicate(), Shard(1)), (Shard(0), Shard(0))]):
        piece = distribute_tensor(whole, mesh, placements)
        out[f"g_dtensor{i}_local"] = piece.to_local().numpy()
        out[f"g_dtensor{i}_full"] = piece.full_tensor().numpy()
        moved = piece.redistribute(mesh, (Replicate(), Shard(0)))
        out[f"g_dtensor{i}_moved"] = moved.to_local().numpy()
    local = DTensor.from_local(kiln.ones(2, 3), mesh, (Shard(0), Shard(1)))
    out["g_from_local"] = np.array(list(local.global_shape))


def main() -> None:
    out_dir = sys.argv[1]
    import kiln
    import kiln.distributed as dist
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    if world == 4:
        sections = [("groups", lambda out: _groups(kiln, out)),
                    ("fsdp_tp", lambda out: _fsdp_tp(kiln, out, "fsdp_tp", False,
                                                     out_dir=out_dir)),
                    ("fsdp_tp_lp", lambda out: _fsdp_tp(kiln, out, "fsdp_tp_lp", True)),
                    ("hsdp", lambda out: _hsdp(kiln, out)),
                    ("bfloat16", lambda out: _bfloat16(kiln, out)),
                    ("cuda_fake", lambda out: _cuda_fake(kiln, out))]     # last: see there
    else:
        sections = [("loss_parallel", lambda out: _loss_parallel(kiln, out))]
    out: dict = {}
    for name, run in sections:
        try:
            run(out)
        except Exception:                               # noqa: BLE001 - reported by the test
            out[f"error:{name}"] = np.array(traceback.format_exc())
    np.savez(os.path.join(out_dir, f"rank{rank}_of{world}.npz"), **out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
