"""torch's own FSDP1 (`FullyShardedDataParallel`) on the FSDP tests' transformer:
`python fsdp1_torch_ranks.py OUT` spawns two processes (torch.multiprocessing, gloo) that wrap
the torch twin of `fsdp_workloads.Transformer` (kiln's initial weights) as the FSDP examples
do, train it with AdamW, each on its half of every batch, and write the losses, the full state
dict, the units each auto-wrap policy makes and the state dict keys under activation
checkpointing to OUT/torch_rank<r>.npz."""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import torch

from fsdp_torch_ranks import TorchAttention, TorchBlock, lm_loss, twin


def rank_main(rank: int, world: int, store: str, out: str, weights: dict, batches: list,
              sizes: tuple) -> None:
    import torch.distributed as tdist
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper)
    from torch.distributed.fsdp import FullStateDictConfig, MixedPrecision, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import (
        CustomPolicy, ModuleWrapPolicy, lambda_auto_wrap_policy, size_based_auto_wrap_policy,
        transformer_auto_wrap_policy)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    layers = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={TorchBlock})
    cpu = torch.device("cpu")
    results = {}
    policies = {"layers": layers,
                "size": functools.partial(size_based_auto_wrap_policy, min_num_params=100),
                "module": ModuleWrapPolicy({TorchAttention}),
                "lambda": functools.partial(
                    lambda_auto_wrap_policy,
                    lambda_fn=lambda m: isinstance(m, torch.nn.LayerNorm)),
                "custom": CustomPolicy(lambda m: isinstance(m, (TorchAttention,
                                                                torch.nn.Embedding)))}
    for name, policy in policies.items():
        model = FSDP(twin(weights, *sizes), auto_wrap_policy=policy, device_id=cpu)
        results[f"wrap_{name}"] = np.array([k for k, m in model.named_modules()
                                            if isinstance(m, FSDP)])

    def train(model, steps: int) -> list[float]:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for batch in batches[:steps]:
            half = len(batch) // world
            loss = lm_loss(model, torch.from_numpy(batch[rank * half:(rank + 1) * half]))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses

    f64 = MixedPrecision(param_dtype=torch.float64, reduce_dtype=torch.float64,
                         buffer_dtype=torch.float64)
    model = FSDP(twin(weights, *sizes), auto_wrap_policy=layers, mixed_precision=f64,
                 device_id=cpu)
    results["losses"] = np.array(train(model, len(batches)))
    # offload_to_cpu=True fails in torch's FSDP1 on CPU parameters, so it is left off here
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(rank0_only=True)):
        state = model.state_dict()
    results["keys_on_rank"] = np.array(len(state))
    results.update({f"state/{k}": v.numpy() for k, v in state.items()})
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=functools.partial(
            checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: isinstance(m, TorchBlock))
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT):
        results["ac_keys"] = np.array(list(model.state_dict()))

    bf16 = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    model = FSDP(twin(weights, *sizes).float(), auto_wrap_policy=layers, mixed_precision=bf16,
                 device_id=cpu)
    results["bf16_losses"] = np.array(train(model, 3))
    np.savez(os.path.join(out, f"torch_rank{rank}.npz"), **results)
    tdist.barrier()
    # Both ranks have written their files. Leave without teardown: gloo's worker threads can
    # abort the process while the process group and the interpreter are destroyed ("terminate
    # called without an active exception", a torch-side race seen once in CI).
    os._exit(0)


def main() -> None:
    out = sys.argv[1]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))
    from tests.distributed import fsdp_workloads as W      # kiln: in this parent only
    import torch.multiprocessing as mp
    weights = W.state(W.transformer(0))
    batches = [W.tokens(step) for step in range(W.STEPS)]
    mp.spawn(rank_main, args=(2, os.path.join(out, "store"), out, weights, batches,
                              (W.VOCAB, W.SEQ, W.LAYERS)), nprocs=2)


if __name__ == "__main__":
    main()
