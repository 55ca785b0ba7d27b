"""Run by `mpiexec -n 2` from tests/distributed/test_fsdp1.py: every rank runs each FSDP1
(`FullyShardedDataParallel`) check and writes what it got to OUT/rank<r>.npz; the tests
compare those with a single-process kiln run on the whole batch and with torch's own FSDP1.
A check that raises records its message instead."""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import kiln  # noqa: E402
import kiln.distributed as dist  # noqa: E402
import kiln.distributed.checkpoint as dist_cp  # noqa: E402
import kiln.nn as nn  # noqa: E402
from kiln.distributed.algorithms._checkpoint.checkpoint_wrapper import (  # noqa: E402
    CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper)
from kiln.distributed.fsdp import (  # noqa: E402
    BackwardPrefetch, FullOptimStateDictConfig, FullStateDictConfig, MixedPrecision,
    ShardingStrategy, StateDictType)
from kiln.distributed.fsdp import FullyShardedDataParallel as FSDP  # noqa: E402
from kiln.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler  # noqa: E402
from kiln.distributed.fsdp.wrap import (  # noqa: E402
    CustomPolicy, ModuleWrapPolicy, lambda_auto_wrap_policy, size_based_auto_wrap_policy,
    transformer_auto_wrap_policy)
from kiln.distributed.tensor import DTensor  # noqa: E402
from tests.distributed import fsdp_workloads as W  # noqa: E402

OUT: dict[str, np.ndarray] = {}
F64 = MixedPrecision(param_dtype=kiln.float64, reduce_dtype=kiln.float64,
                     buffer_dtype=kiln.float64)
LAYERS = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={W.Block})
STRATEGIES = {"full": ShardingStrategy.FULL_SHARD, "grad_op": ShardingStrategy.SHARD_GRAD_OP,
              "no_shard": ShardingStrategy.NO_SHARD, "full_ac": ShardingStrategy.FULL_SHARD,
              "hybrid": ShardingStrategy.HYBRID_SHARD}     # one node: FULL_SHARD


def wrapped(seed: int = 0, strategy=ShardingStrategy.FULL_SHARD, **kwargs) -> FSDP:
    """The FSDP examples' pattern: one unit per block, the rest in the root unit."""
    return FSDP(W.transformer(seed), auto_wrap_policy=LAYERS, mixed_precision=F64,
                sharding_strategy=strategy, device_id=kiln.device("cpu"),
                backward_prefetch=BackwardPrefetch.BACKWARD_PRE, limit_all_gathers=True,
                forward_prefetch=True, **kwargs)


def adamw(model) -> kiln.optim.Optimizer:
    return kiln.optim.AdamW(model.parameters(), lr=1e-2)


def full_state(model, rank0_only: bool = True) -> dict:
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(offload_to_cpu=True, rank0_only=rank0_only)):
        return model.state_dict()


def save_full(prefix: str, state: dict) -> None:
    for k, v in state.items():
        OUT[f"{prefix}/{k}"] = v.numpy()


def check_wrapping(r: int, n: int) -> None:
    """Which submodules each policy makes units of (compared with torch's FSDP)."""
    policies = {"layers": LAYERS,
                "size": functools.partial(size_based_auto_wrap_policy, min_num_params=100),
                "module": ModuleWrapPolicy({W.Attention}),
                "lambda": functools.partial(lambda_auto_wrap_policy,
                                            lambda_fn=lambda m: isinstance(m, nn.LayerNorm)),
                "custom": CustomPolicy(lambda m: isinstance(m, (W.Attention, nn.Embedding)))}
    for name, policy in policies.items():
        model = FSDP(W.transformer(0), auto_wrap_policy=policy)
        OUT[f"wrap_{name}"] = np.array([k for k, m in model.named_modules()
                                        if isinstance(m, FSDP)])
    model = wrapped()
    OUT["param_names"] = np.array([k for k, _ in model.named_parameters()])
    OUT["all_sharded"] = np.array(all(isinstance(p, DTensor) for p in model.parameters()))
    kiln.manual_seed(3)
    model.apply(W.init_normal)            # on the whole parameters: one process's draws
    save_full("apply", full_state(model, rank0_only=False))


def check_train(r: int, n: int) -> None:
    """5 AdamW steps, each rank on its half of every batch, under each sharding strategy.
    The FULL_SHARD run starts rank 1 from other weights: sync_module_states gives it rank
    0's."""
    for name, strategy in STRATEGIES.items():
        seed = r if name == "full" else 0
        model = wrapped(seed, strategy, sync_module_states=name == "full")
        if name == "full_ac":
            apply_activation_checkpointing(
                model, checkpoint_wrapper_fn=functools.partial(
                    checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
                check_fn=lambda m: isinstance(m, W.Block))
            OUT["ac_wrappers"] = np.array(sum(type(m).__name__ == "CheckpointWrapper"
                                              for m in model.modules()))
        OUT[f"{name}_losses"] = np.array(W.train(model, adamw(model), W.STEPS, rank=r))
        state = full_state(model)
        OUT[f"{name}_keys_on_rank"] = np.array(len(state))
        save_full(name, state)


def check_resume(r: int, n: int, out_dir: str) -> None:
    """Save after 3 steps (rank 0 only: the full model file and the full optimizer state),
    load into a model built from other weights, train 2 more steps: the 5-step numbers."""
    model = wrapped()
    opt = adamw(model)
    W.train(model, opt, 3, rank=r)
    state = full_state(model)
    full_osd = FSDP.full_optim_state_dict(model, opt)
    OUT["resume_osd_keys_on_rank"] = np.array(len(full_osd))
    path = os.path.join(out_dir, "fsdp1_model.kiln")
    if r == 0:
        kiln.save(state, path)
    dist.barrier()
    fresh = wrapped(seed=7)
    with FSDP.state_dict_type(fresh, StateDictType.FULL_STATE_DICT):
        fresh.load_state_dict(kiln.load(path))
    opt2 = adamw(fresh)
    opt2.load_state_dict(FSDP.scatter_full_optim_state_dict(full_osd if r == 0 else None,
                                                            fresh))
    OUT["resume_losses"] = np.array(W.train(fresh, opt2, 2, rank=r, start=3))
    save_full("resume", full_state(fresh, rank0_only=False))

    # the newer spelling: optim_state_dict under FULL_STATE_DICT, optim_state_dict_to_load
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                              optim_state_dict_config=FullOptimStateDictConfig()):
        osd = FSDP.optim_state_dict(model, opt)
    OUT["resume_full_osd_is_whole"] = np.array(
        tuple(osd["state"]["output.weight"]["exp_avg"].shape) == (W.VOCAB, W.DIM))
    again = wrapped(seed=8)
    again.load_state_dict(kiln.load(path))
    opt3 = adamw(again)
    FSDP.optim_state_dict_to_load(again, opt3, osd, load_directly=True)
    OUT["resume2_losses"] = np.array(W.train(again, opt3, 2, rank=r, start=3))


def check_sharded_checkpoint(r: int, n: int, out_dir: str) -> None:
    """The FSDP example's sharded checkpoint: SHARDED_STATE_DICT model and optim state saved
    with dist_cp.save_state_dict(FileSystemWriter), loaded with load_state_dict
    (FileSystemReader) into a model built from other weights; LOCAL_STATE_DICT round trip."""
    model = wrapped()
    opt = adamw(model)
    W.train(model, opt, 3, rank=r)
    directory = os.path.join(out_dir, "fsdp1_sharded")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
            state = {"model": model.state_dict(), "optim": FSDP.optim_state_dict(model, opt)}
            OUT["sharded_is_dtensor"] = np.array(all(isinstance(v, DTensor)
                                                     for v in state["model"].values()))
            dist_cp.save_state_dict(state_dict=state,
                                    storage_writer=dist_cp.FileSystemWriter(directory),
                                    planner=dist_cp.DefaultSavePlanner())
        fresh = wrapped(seed=7)
        opt2 = adamw(fresh)
        with FSDP.state_dict_type(fresh, StateDictType.SHARDED_STATE_DICT):
            target = {"model": fresh.state_dict(), "optim": FSDP.optim_state_dict(fresh, opt2)}
            dist_cp.load_state_dict(state_dict=target,
                                    storage_reader=dist_cp.FileSystemReader(directory),
                                    planner=dist_cp.DefaultLoadPlanner())
            fresh.load_state_dict(target["model"])
            opt2.load_state_dict(FSDP.optim_state_dict_to_load(fresh, opt2, target["optim"]))
    OUT["sharded_losses"] = np.array(W.train(fresh, opt2, 2, rank=r, start=3))
    save_full("sharded", full_state(fresh, rank0_only=False))

    with FSDP.state_dict_type(fresh, StateDictType.LOCAL_STATE_DICT):
        local = {k: v.clone() for k, v in fresh.state_dict().items()}
    OUT["local_rows"] = np.array(local["output.weight"].shape[0])
    other = wrapped(seed=9)
    with FSDP.state_dict_type(other, StateDictType.LOCAL_STATE_DICT):
        other.load_state_dict(local)
    save_full("local", full_state(other, rank0_only=False))


def check_plain_root(r: int, n: int) -> None:
    """Units wrapped by hand under a plain root: its state_dict() has the model's keys
    (gathered by the units), and its load_state_dict gives each unit its rows (read back
    inside summon_full_params)."""
    def build(seed: int):
        model = W.transformer(seed)
        for i, layer in enumerate(model.layers):
            model.layers[i] = FSDP(layer, mixed_precision=F64)
        return model
    state = {k: v.clone() for k, v in build(0).state_dict().items()}
    other = build(7)
    other.load_state_dict(state)
    with FSDP.summon_full_params(other):
        save_full("plain_root", {k: v.detach().clone() for k, v in other.state_dict().items()})


def check_no_sync(r: int, n: int) -> None:
    """Two micro-batches, the first under no_sync: the gradients of their sum, averaged."""
    for name in ("full", "no_shard"):
        model = wrapped(0, STRATEGIES[name])
        batch = W.tokens(0, r)
        with model.no_sync():
            W.lm_loss(model, batch[:2]).backward()
        W.lm_loss(model, batch[2:]).backward()
        grads = {k: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad)
                 for k, p in model.named_parameters()}
        save_full(f"nosync_{name}", grads)


def check_clip(r: int, n: int) -> None:
    model = wrapped()
    W.lm_loss(model, W.tokens(0, r)).backward()
    OUT["clip_total"] = model.clip_grad_norm_(0.05).numpy()
    save_full("clip", {k: p.grad.full_tensor() for k, p in model.named_parameters()})


def check_scaler(r: int, n: int) -> None:
    """ShardedGradScaler: an inf in rank 1's gradient shard makes both ranks skip the step
    and halve the scale; the next (finite) step is an ordinary AdamW step."""
    model = wrapped()
    opt = adamw(model)
    scaler = ShardedGradScaler("cpu", init_scale=1024.0)
    before = full_state(model, rank0_only=False)
    scaler.scale(W.lm_loss(model, W.tokens(0, r))).backward()
    if r == 1:
        model.module.output.weight.grad._data[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    OUT["scaler_skipped"] = np.array(all(
        np.array_equal(v.numpy(), before[k].numpy())
        for k, v in full_state(model, rank0_only=False).items()))
    OUT["scaler_scale"] = np.array(scaler.get_scale())
    opt.zero_grad()
    scaler.scale(W.lm_loss(model, W.tokens(0, r))).backward()
    scaler.step(opt)
    scaler.update()
    save_full("scaler", full_state(model, rank0_only=False))


def check_bf16(r: int, n: int) -> None:
    """bfloat16 gathered parameters, float32 gradient reduction (compared loosely)."""
    model = FSDP(W.transformer(0).float(), auto_wrap_policy=LAYERS,
                 mixed_precision=MixedPrecision(param_dtype=kiln.bfloat16,
                                                reduce_dtype=kiln.float32))
    OUT["bf16_losses"] = np.array(W.train(model, adamw(model), 3, rank=r))
    OUT["bf16_param_dtype"] = np.array(str(next(model.parameters()).dtype))


def main() -> None:
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    r, n = dist.get_rank(), dist.get_world_size()
    for check in (check_wrapping, check_train, check_resume, check_sharded_checkpoint,
                  check_plain_root, check_no_sync, check_clip, check_scaler, check_bf16):
        name = check.__name__[len("check_"):]
        try:
            takes_dir = check in (check_resume, check_sharded_checkpoint)
            check(r, n, *([out_dir] if takes_dir else []))
        except Exception:
            OUT[f"error:{name}"] = np.array(traceback.format_exc())
    np.savez(os.path.join(out_dir, f"rank{r}.npz"), **OUT)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
