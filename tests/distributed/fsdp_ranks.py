"""Run by `mpiexec -n 2` from tests/distributed/test_fsdp.py: every rank runs each FSDP check
and writes what it got to OUT/rank<r>.npz; the tests compare those with single-process kiln
(and torch) references. A check that raises records its message instead."""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import kiln  # noqa: E402
import kiln.distributed as dist  # noqa: E402
import kiln.distributed.checkpoint as dcp  # noqa: E402
import kiln.nn as nn  # noqa: E402
import kiln.nn.functional as F  # noqa: E402
from kiln.distributed.checkpoint.state_dict import (  # noqa: E402
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
    set_optimizer_state_dict)
from kiln.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard  # noqa: E402
from kiln.distributed.tensor import (  # noqa: E402
    DTensor, Replicate, Shard, distribute_tensor, init_device_mesh)
from tests.distributed import fsdp_workloads as W  # noqa: E402

OUT: dict[str, np.ndarray] = {}
FULL = StateDictOptions(full_state_dict=True)


def sharded_transformer(seed: int = 0, **kwargs) -> nn.Module:
    model = W.transformer(seed)
    for layer in model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def save_full(prefix: str, state: dict) -> None:
    for k, v in state.items():
        OUT[f"{prefix}/{k}"] = v.numpy()


def check_transformer(r: int, n: int) -> None:
    model = sharded_transformer()
    OUT["transformer_classes"] = np.array([type(model).__name__, type(model.layers[0]).__name__,
                                           type(model.layers[0].attention).__name__])
    OUT["transformer_all_dtensor"] = np.array(all(
        isinstance(p, DTensor) and isinstance(p, nn.Parameter) and p.placements == (Shard(0),)
        for p in model.parameters()))
    OUT["transformer_is_fsdp"] = np.array([isinstance(model, FSDPModule),
                                           isinstance(model.layers[1], FSDPModule),
                                           isinstance(model, W.Transformer)])
    OUT["output_weight_local_rows"] = np.array(model.output.weight.shape[0])
    losses = W.train(model, W.adam(model), W.STEPS, rank=r)
    OUT["transformer_losses"] = np.array(losses)
    save_full("transformer", get_model_state_dict(model, options=FULL))
    offloaded = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                     cpu_offload=True))
    OUT["offloaded_keys"] = np.array(len(offloaded))
    sharded = model.state_dict()
    OUT["tok_embeddings_local"] = sharded["tok_embeddings.weight"].to_local().numpy()
    OUT["tok_embeddings_full"] = sharded["tok_embeddings.weight"].full_tensor().numpy()


def check_meta_init(r: int, n: int) -> None:
    """The FSDP2 example's pattern: build on the meta device, shard, give the shards memory,
    load rank 0's full weights; and convert dtype after sharding (the shards convert)."""
    with kiln.device("meta"):
        model = W.Transformer()
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cpu")
    weights = {k: kiln.tensor(v) for k, v in W.state(W.transformer(0).float()).items()}
    set_model_state_dict(model, weights if r == 0 else {},
                         options=StateDictOptions(full_state_dict=True,
                                                  broadcast_from_rank0=True))
    model.double()
    OUT["meta_dtype"] = np.array(model.output.weight.dtype.name)
    OUT["meta_losses"] = np.array(W.train(model, W.adam(model), 2, rank=r))


def check_clip(r: int, n: int) -> None:
    """clip_grad_norm_ over sharded gradients: the whole gradients' norm on every rank."""
    for norm_type in (2.0, 1.0, float("inf")):
        kiln.manual_seed(5)
        model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)).double()
        fully_shard(model)
        x, y = W.mlp_data(r)
        F.mse_loss(model(kiln.tensor(x[:, :5]).double()),
                   kiln.tensor(y[:, :1]).double()).backward()
        total = kiln.nn.utils.clip_grad_norm_(model.parameters(), 0.01, norm_type=norm_type)
        OUT[f"clip_total_{norm_type}"] = total.numpy()
        save_full(f"clip_{norm_type}", {k: p.grad.full_tensor()
                                        for k, p in model.named_parameters()})


def check_uneven(r: int, n: int) -> None:
    kiln.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    fully_shard(model)
    OUT["uneven_local_shapes"] = np.array([list(p.shape) + [0] * (2 - p.ndim)
                                           for p in model.parameters()])
    OUT["uneven_local_values"] = model[0].weight.to_local().numpy().copy()
    opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = W.mlp_data(r)
    for _ in range(3):
        loss = F.mse_loss(model(kiln.tensor(x[:, :5]).double()), kiln.tensor(y[:, :1]).double())
        loss.backward()
        opt.step()
        opt.zero_grad()
    save_full("uneven", get_model_state_dict(model, options=FULL))


def check_mixed_precision(r: int, n: int) -> None:
    model = W.mlp()
    policy = MixedPrecisionPolicy(param_dtype=kiln.bfloat16, reduce_dtype=kiln.float32)
    fully_shard(model[0], mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    seen = []       # registered after fully_shard's hooks: sees the gathered parameters
    model[0].register_forward_pre_hook(lambda m, a: seen.extend(
        (m.weight.dtype.name, a[0].dtype.name)))
    model[0].register_forward_hook(lambda m, a, o: seen.append(o.dtype.name))
    model.unshard()
    OUT["mp_unsharded_dtypes"] = np.array([model[2].weight.dtype.name,
                                           type(model[2].weight).__name__])
    model.reshard()
    OUT["mp_resharded"] = np.array(all(isinstance(p, DTensor) for p in model.parameters()))
    x, y = W.mlp_data(r)
    out = model(kiln.tensor(x))
    loss = F.mse_loss(out.float(), kiln.tensor(y))
    loss.backward()
    OUT["mp_forward_dtypes"] = np.array(seen)
    OUT["mp_grad_dtypes"] = np.array([p.grad.dtype.name for p in model.parameters()])
    for i, p in enumerate(model.parameters()):
        OUT[f"mp_grad/{i}"] = p.grad.full_tensor().numpy()
    # float16 everywhere: the reduction runs in float32 (MPI has no 16-bit sum), then rounds
    half = W.mlp()
    fully_shard(half, mp_policy=MixedPrecisionPolicy(param_dtype=kiln.float16))
    F.mse_loss(half(kiln.tensor(x)).float(), kiln.tensor(y)).backward()
    for i, p in enumerate(half.parameters()):
        OUT[f"fp16_grad/{i}"] = p.grad.full_tensor().numpy()


def check_reshard_options(r: int, n: int) -> None:
    """reshard_after_forward=False keeps the layers gathered from forward to backward; the
    numbers do not change."""
    model = sharded_transformer(reshard_after_forward=False)
    logits = model(kiln.tensor(W.tokens(0, r)[:, :-1]))
    OUT["kept_gathered"] = np.array([type(model.layers[0].w1.weight).__name__,
                                     type(model.output.weight).__name__])
    logits.sum().backward()
    OUT["resharded_after_backward"] = np.array(all(isinstance(p, DTensor)
                                                   for p in model.parameters()))
    model = sharded_transformer(reshard_after_forward=True)
    model(kiln.tensor(W.tokens(0, r)[:, :-1]))
    OUT["root_resharded"] = np.array(type(model.output.weight).__name__)
    model = sharded_transformer(reshard_after_forward=False)
    OUT["kept_losses"] = np.array(W.train(model, W.adam(model), 2, rank=r))


def check_accumulation(r: int, n: int) -> None:
    model = sharded_transformer()
    for step in range(2):
        W.lm_loss(model, W.tokens(step, r)).backward()
    for name, p in model.named_parameters():
        OUT[f"accumulated/{name}"] = p.grad.full_tensor().numpy()
    for p in model.parameters():
        p.grad = None
    model.set_requires_gradient_sync(False)
    W.lm_loss(model, W.tokens(0, r)).backward()
    OUT["no_sync_grads_none"] = np.array(all(p.grad is None for p in model.parameters()))
    model.set_requires_gradient_sync(True)
    W.lm_loss(model, W.tokens(1, r)).backward()
    for name, p in model.named_parameters():
        OUT[f"no_sync/{name}"] = p.grad.full_tensor().numpy()


def check_state_dicts(r: int, n: int) -> None:
    model = sharded_transformer()
    opt = W.adam(model)
    W.train(model, opt, 2, rank=r)
    model_sd = get_model_state_dict(model, options=FULL)
    optim_sd = get_optimizer_state_dict(model, opt, options=FULL)
    OUT["optim_sd_keys"] = np.array(sorted(optim_sd["state"]))
    OUT["optim_sd_exp_avg"] = optim_sd["state"]["output.weight"]["exp_avg"].numpy()
    sharded_osd = get_optimizer_state_dict(model, opt)
    OUT["sharded_osd_is_dtensor"] = np.array(
        isinstance(sharded_osd["state"]["output.weight"]["exp_avg"], DTensor))
    # the sharded state dicts share memory with the model: load them before it trains on
    sharded_copy = sharded_transformer(seed=3)
    sharded_opt = W.adam(sharded_copy)
    set_model_state_dict(sharded_copy, get_model_state_dict(model))
    set_optimizer_state_dict(sharded_copy, sharded_opt, sharded_osd)
    x = W.tokens(9, r)[:, :-1]
    with kiln.no_grad():
        OUT["roundtrip_outputs_before"] = model(kiln.tensor(x)).numpy()
    fresh = sharded_transformer(seed=1)
    fresh_opt = W.adam(fresh)
    set_model_state_dict(fresh, model_sd, options=FULL)
    with kiln.no_grad():
        OUT["roundtrip_outputs_after"] = fresh(kiln.tensor(x)).numpy()
    set_optimizer_state_dict(fresh, fresh_opt, optim_sd, options=FULL)
    bcast = sharded_transformer(seed=2)
    bcast_opt = W.adam(bcast)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(bcast, model_sd if r == 0 else {}, options=opts)
    set_optimizer_state_dict(bcast, bcast_opt, optim_sd if r == 0 else {}, options=opts)
    for name, (m, o) in {"uninterrupted": (model, opt), "full": (fresh, fresh_opt),
                         "broadcast": (bcast, bcast_opt),
                         "sharded": (sharded_copy, sharded_opt)}.items():
        OUT[f"resumed_losses_{name}"] = np.array(W.train(m, o, 2, rank=r, start=2))
        save_full(f"resumed_{name}", get_model_state_dict(m, options=FULL))


def check_dcp(r: int, n: int, out_dir: str) -> None:
    """dcp.save of model + optimizer, loaded into a fresh sharded model: training resumes."""
    model = sharded_transformer()
    opt = W.adam(model)
    W.train(model, opt, 2, rank=r)
    path = os.path.join(out_dir, "dcp")
    OUT["dcp_dir"] = np.array(path)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=path)
    fresh = sharded_transformer(seed=1)
    fresh_opt = W.adam(fresh)
    state = {"model": get_model_state_dict(fresh), "optim": get_optimizer_state_dict(fresh,
                                                                                      fresh_opt)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(fresh, state["model"])
    set_optimizer_state_dict(fresh, fresh_opt, state["optim"])
    OUT["dcp_losses_uninterrupted"] = np.array(W.train(model, opt, 2, rank=r, start=2))
    OUT["dcp_losses_loaded"] = np.array(W.train(fresh, fresh_opt, 2, rank=r, start=2))


def check_dtensor(r: int, n: int) -> None:
    mesh = init_device_mesh("cpu", (n,))
    OUT["mesh"] = np.array([mesh.size(), mesh.get_rank(), mesh.ndim])
    full = kiln.tensor(np.arange(15.0).reshape(5, 3) + 100 * r)      # rank 0's data wins
    rows = distribute_tensor(full, mesh, [Shard(0)])
    OUT["dt_shard0_local"] = rows.to_local().numpy()
    OUT["dt_shard0_full"] = rows.full_tensor().numpy()
    cols = distribute_tensor(kiln.tensor(np.arange(20.0).reshape(4, 5)), mesh, [Shard(1)],
                             src_data_rank=None)
    OUT["dt_shard1_local"] = cols.to_local().numpy()
    OUT["dt_shard1_full"] = cols.full_tensor().numpy()
    rep = distribute_tensor(full, mesh, [Replicate()])
    OUT["dt_replicate"] = rep.to_local().numpy()
    OUT["dt_redistributed"] = rows.redistribute(mesh, [Replicate()]).to_local().numpy()
    local = kiln.tensor(np.full((2, 3), float(r)))
    joined = DTensor.from_local(local, mesh, [Shard(0)])
    OUT["dt_from_local"] = joined.full_tensor().numpy()
    OUT["dt_from_local_shape"] = np.array(list(joined.global_shape))


def check_cuda_fake(r: int, n: int) -> None:
    """The transformer on cuda tensors through kiln's NCCL backend, over the stand-in NCCL
    (fake_nccl.py) and fake CUDA (tests/fake_cuda.py): checks that FSDP's buffers and
    collectives go through the device's array module. Runs last: the fake CUDA patches kiln's
    device module for the rest of the process."""
    import tests.fake_cuda
    tests.fake_cuda.install()
    from kiln.distributed import process_group as pg
    from kiln.distributed.nccl_backend import NCCLBackend
    from tests.distributed.fake_nccl import FakeNccl, FakeNcclCommunicator, fake_cupy
    nccl = FakeNccl()
    pg._WORLD.nccl = NCCLBackend(FakeNcclCommunicator(pg._WORLD.comm.Dup(), nccl), r, n, nccl,
                                 fake_cupy)
    model = W.transformer(0).cuda()
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = W.adam(model)
    losses = []
    for step in range(2):
        logits = model(kiln.tensor(W.tokens(step, r)[:, :-1]).cuda())
        loss = F.cross_entropy(logits.reshape(-1, W.VOCAB),
                               kiln.tensor(W.tokens(step, r)[:, 1:]).cuda().reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    OUT["cuda_losses"] = np.array(losses)
    OUT["cuda_device"] = np.array(str(model.output.weight.device))
    OUT["cuda_nccl_calls"] = np.array(sorted(set(nccl.calls)))
    save_full("cuda", {k: v.cpu() for k, v in
                       get_model_state_dict(model, options=FULL).items()})


def main() -> None:
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    r, n = dist.get_rank(), dist.get_world_size()
    for check in (check_dtensor, check_transformer, check_meta_init, check_reshard_options,
                  check_uneven, check_clip,
                  check_mixed_precision, check_accumulation, check_state_dicts, check_dcp,
                  check_cuda_fake):
        name = check.__name__[len("check_"):]
        try:
            check(r, n, *([out_dir] if check is check_dcp else []))
        except Exception:
            OUT[f"error:{name}"] = np.array(traceback.format_exc())
    np.savez(os.path.join(out_dir, f"rank{r}.npz"), **OUT)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
