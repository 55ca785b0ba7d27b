"""Run by `mpiexec -n 2` from tests/distributed/test_tp.py: every rank runs each tensor-parallel
check and writes what it got to OUT/rank<r>.npz; the tests compare those with single-process
kiln (and torch) references. A check that raises records its message instead."""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import kiln  # noqa: E402
import kiln.distributed as dist  # noqa: E402
import kiln.distributed.tensor.parallel as tp  # noqa: E402
import kiln.nn as nn  # noqa: E402
import kiln.nn.functional as F  # noqa: E402
from kiln.distributed.tensor import DTensor, Replicate, Shard, init_device_mesh  # noqa: E402
from tests.distributed import tp_workloads as W  # noqa: E402

OUT: dict[str, np.ndarray] = {}


def full_grads(model) -> dict[str, np.ndarray]:
    """Every parameter's whole gradient: a sharded parameter's pieces gathered."""
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        if isinstance(p, DTensor):
            g = DTensor._wrap(g._data, g.dtype, g.device, p.device_mesh, p.placements,
                              p._global_shape).full_tensor()
        grads[name] = g.float().numpy().copy() if g.dtype == kiln.bfloat16 else \
            g.numpy().copy()
    return grads


def save(prefix: str, values: dict) -> None:
    for k, v in values.items():
        OUT[f"{prefix}/{k}"] = np.asarray(v)


def full_state(model) -> dict[str, np.ndarray]:
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).numpy()
            for k, v in model.state_dict().items()}


def train(prefix: str, model, loss_fn) -> None:
    """STEPS Adam steps; saves the losses, the first step's full gradients, the final state."""
    opt = W.adam(model)
    losses = []
    for step in range(W.STEPS):
        loss = loss_fn(model)
        loss.backward()
        if step == 0:
            save(prefix + "_grad", full_grads(model))
            OUT[prefix + "_grad_dtensor"] = np.array(all(
                isinstance(p.grad, DTensor) for p in model.parameters()
                if isinstance(p, DTensor)))
            # a max_norm no gradient reaches: the norm only (the gradients are scaled by 1)
            OUT[prefix + "_grad_norm"] = np.array(float(nn.utils.clip_grad_norm_(
                model.parameters(), 1e9)))
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    OUT[prefix + "_losses"] = np.array(losses)
    save(prefix + "_state", full_state(model))


def check_mlp(r: int, n: int, mesh) -> None:
    model = tp.parallelize_module(W.mlp(), mesh, {"in_proj": tp.ColwiseParallel(),
                                                  "out_proj": tp.RowwiseParallel()})
    OUT["mlp_placements"] = np.array([str(p.placements[0]) for p in model.parameters()])
    OUT["mlp_local_shapes"] = np.array([list(p.shape) + [0] * (2 - p.ndim)
                                        for p in model.parameters()])
    OUT["mlp_all_dtensor_params"] = np.array(all(
        isinstance(p, DTensor) and isinstance(p, nn.Parameter) for p in model.parameters()))
    sd = model.state_dict()
    OUT["mlp_state_dict_dtensor"] = np.array([isinstance(v, DTensor) for v in sd.values()])
    OUT["mlp_in_weight_local"] = sd["in_proj.weight"].to_local().numpy().copy()
    x, y = (kiln.tensor(a) for a in W.mlp_data(n))
    train("mlp", model, lambda m: F.mse_loss(m(x), y))


def check_mlp_sequence(r: int, n: int, mesh) -> None:
    """sequence_parallel_example's plan: each rank's input rows are its Shard(0) of the batch;
    its loss is its rows' share of the whole batch's mean squared error."""
    plan = {"in_proj": tp.ColwiseParallel(input_layouts=Shard(0)),
            "out_proj": tp.RowwiseParallel(output_layouts=Shard(0))}
    model = tp.parallelize_module(W.mlp(), mesh, plan)
    x, y = W.mlp_data(n)
    rows = slice(r * 4, (r + 1) * 4)
    x, y = kiln.tensor(x[rows]), kiln.tensor(y[rows])
    train("mlp_seq", model, lambda m: ((m(x) - y) ** 2).sum() / (n * y.numel()))


def parallel_transformer(sequence_parallel: bool):
    model = W.transformer(0)
    top, block = (W.sp_plans if sequence_parallel else W.tp_plans)(tp, Shard, Replicate)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    tp.parallelize_module(model, mesh, top)
    for layer in model.layers:
        # a fresh plan per block, as the example builds one per layer
        _, block = (W.sp_plans if sequence_parallel else W.tp_plans)(tp, Shard, Replicate)
        tp.parallelize_module(layer, mesh, block)
    return model


def check_transformer(r: int, n: int, mesh) -> None:
    model = parallel_transformer(False)
    OUT["transformer_placements"] = np.array([f"{k}:{p.placements[0]}:{list(p.shape)}"
                                              for k, p in model.named_parameters()
                                              if isinstance(p, DTensor)])
    batch = W.tokens()
    train("transformer", model, lambda m: W.lm_loss(m, batch))


def check_sequence_parallel(r: int, n: int, mesh) -> None:
    model = parallel_transformer(True)
    OUT["sp_norm_placement"] = np.array(str(model.layers[0].attention_norm.weight.placements))
    batch = W.tokens()
    train("sp", model, lambda m: W.lm_loss(m, batch))


def check_embedding(r: int, n: int, mesh) -> None:
    """Rowwise (vocabulary rows 0-5 on rank 0, 6-10 on rank 1) and colwise Embeddings, with ids
    on both ranks' halves and a padding row owned by rank 1."""
    ids = kiln.tensor(np.array([[0, 7, 10, 5], [6, 3, 7, 9]]))
    probe = kiln.tensor(np.random.default_rng(3).normal(size=(2, 4, 4)))
    for name, style, pad in (("rowwise", tp.RowwiseParallel(input_layouts=Replicate()), 7),
                             ("colwise", tp.ColwiseParallel(output_layouts=Replicate()), None)):
        kiln.manual_seed(4)
        emb = tp.parallelize_module(nn.Embedding(W.VOCAB, 4, padding_idx=pad).double(), mesh,
                                    style)
        out = emb(ids)
        (out * probe).sum().backward()
        OUT[f"emb_{name}_out"] = out.detach().numpy()
        OUT[f"emb_{name}_local_shape"] = np.array(list(emb.weight.shape))
        OUT[f"emb_{name}_grad"] = full_grads(emb)["weight"]


def check_bfloat16(r: int, n: int, mesh) -> None:
    """The sequence-parallel MLP plan in bfloat16 (its all-reduce and reduce-scatter sum in
    float32 on the wire): one forward and backward."""
    plan = {"in_proj": tp.ColwiseParallel(input_layouts=Shard(0)),
            "out_proj": tp.RowwiseParallel(output_layouts=Shard(0))}
    model = tp.parallelize_module(W.mlp().to(kiln.bfloat16), mesh, plan)
    x, y = W.mlp_data(n)
    rows = slice(r * 4, (r + 1) * 4)
    x, y = kiln.tensor(x[rows]).to(kiln.bfloat16), kiln.tensor(y[rows]).to(kiln.bfloat16)
    loss = ((model(x) - y) ** 2).sum() / (n * y.numel())
    loss.backward()
    OUT["bf16_loss"] = np.array(float(loss))
    OUT["bf16_dtype"] = np.array(str(model.out_proj.bias.grad.dtype))
    save("bf16_grad", {k: v.astype(np.float64) for k, v in full_grads(model).items()})


def check_uneven_rows(r: int, n: int, mesh) -> None:
    """A colwise Linear on Shard(0) input rows split 3 + 2 (torch.chunk of 5): the rows are
    gathered, and the input gradient (partial on each rank) is reduced back to each rank's
    rows."""
    x, probe = W.uneven_data()
    rows = slice(0, 3) if r == 0 else slice(3, 5)
    kiln.manual_seed(6)
    lin = tp.parallelize_module(nn.Linear(4, 6).double(), mesh,
                                tp.ColwiseParallel(input_layouts=Shard(0),
                                                   output_layouts=Replicate()))
    xl = kiln.tensor(x[rows]).requires_grad_()
    out = lin(xl)
    (out * kiln.tensor(probe)).sum().backward()
    OUT["uneven_out"] = out.detach().numpy()
    OUT["uneven_x_grad"] = xl.grad.numpy()
    save("uneven_grad", full_grads(lin))


class Combine(nn.Module):
    """x * w (+ y): a module without parameters for the Prepare* styles."""

    def __init__(self, w: np.ndarray):
        super().__init__()
        self.w = kiln.tensor(w)

    def forward(self, x, y=None):
        return x * self.w if y is None else x * self.w + y


def check_prepare(r: int, n: int, mesh) -> None:
    """PrepareModuleInputOutput: each rank's Shard(1) half of x (and of the keyword y) is
    gathered for the module, whose replicated output goes back to Shard(1) DTensors; the
    local inputs' gradients are their halves of the whole."""
    x, y, w, probe = W.prepare_data()
    half = slice(2 * r, 2 * r + 2)
    style = tp.PrepareModuleInputOutput(
        input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
        input_kwarg_layouts={"y": Shard(1)}, desired_input_kwarg_layouts={"y": Replicate()},
        output_layouts=(Replicate(),), desired_output_layouts=(Shard(1),),
        use_local_output=False)
    module = tp.parallelize_module(Combine(w), mesh, style)
    xl = kiln.tensor(x[:, half]).requires_grad_()
    yl = kiln.tensor(y[:, half]).requires_grad_()
    out = module(xl, y=yl)
    OUT["prepare_out_dtensor"] = np.array([isinstance(out, DTensor), str(out.placements),
                                           str(list(out.global_shape))])
    (out * kiln.tensor(probe[:, half])).sum().backward()
    OUT["prepare_out"] = out.detach().numpy().copy()
    OUT["prepare_x_grad"], OUT["prepare_y_grad"] = xl.grad.numpy(), yl.grad.numpy()
    # PrepareModuleOutput alone, to local tensors: a Replicate output to each rank's half
    plain = tp.parallelize_module(Combine(w), mesh, tp.PrepareModuleOutput(
        output_layouts=Replicate(), desired_output_layouts=Shard(1)))
    local = plain(kiln.tensor(x))
    OUT["prepare_output_local"] = np.array([type(local).__name__])
    OUT["prepare_output_values"] = local.numpy()


def check_state_dicts(r: int, n: int, mesh) -> None:
    """A single-process checkpoint loads into a parallelized model (each rank keeps its pieces)
    and comes back whole, with kiln.distributed.checkpoint.state_dict."""
    from kiln.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, set_model_state_dict)
    full = StateDictOptions(full_state_dict=True)
    model = tp.parallelize_module(W.mlp(), mesh, {"in_proj": tp.ColwiseParallel(),
                                                  "out_proj": tp.RowwiseParallel()})
    set_model_state_dict(model, {k: v.detach() for k, v in W.mlp(7).state_dict().items()},
                         options=full)
    save("sd_full", {k: v.numpy() for k, v in get_model_state_dict(model, options=full).items()})
    OUT["sd_out_weight_local"] = model.out_proj.weight.to_local().numpy().copy()


def main() -> None:
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    r, n = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (n,))
    for check in (check_mlp, check_mlp_sequence, check_transformer, check_sequence_parallel,
                  check_embedding, check_state_dicts, check_prepare,
                  check_uneven_rows, check_bfloat16):
        name = check.__name__[len("check_"):]
        try:
            check(r, n, mesh)
        except Exception:
            OUT[f"error:{name}"] = np.array(traceback.format_exc())
    np.savez(os.path.join(out_dir, f"rank{r}.npz"), **OUT)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
