"""Tensor parallelism (`kiln.distributed.tensor.parallel`). Two ranks under mpiexec run
tests/distributed/tp_ranks.py once; every rank trains on the same batch (tensor parallelism
replicates the data), so its losses, first gradients and gathered final parameters must equal
one process's (float64, rtol 1e-9); the single-process kiln run is compared with torch once,
and torch's own parallelize_module on two gloo processes is the strongest check."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

import kiln
import kiln.distributed as dist
import kiln.distributed.tensor.parallel as tp
import kiln.nn as nn
import kiln.nn.functional as F
from kiln.distributed.tensor import DTensor, Replicate, Shard, init_device_mesh
from tests.distributed import launch
from tests.distributed import tp_workloads as W
from tests.distributed.tp_torch_ranks import lm_loss, twin

N = 2
RTOL, ATOL = 1e-9, 1e-12


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launch.rank_outputs("tp_ranks.py", N, tmp_path_factory.mktemp("tp_ranks"))


_results, _prefixed = launch.section, launch.prefixed


def _assert_grads(got: dict, prefix: str, want: dict, what: str) -> None:
    """The gradients, DTensors on the ranks, and clip_grad_norm_'s norm over all of them."""
    want = dict(want)
    assert got[prefix + "_grad_dtensor"]
    np.testing.assert_allclose(got[prefix + "_grad_norm"], want.pop("norm"), rtol=RTOL)
    _assert_same(_prefixed(got, prefix + "_grad"), want, what)


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), what
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{what} {key}")


# ----------------------------------------------------------------------------- references

def _grads(model) -> dict[str, np.ndarray]:
    return {k: p.grad.numpy().copy() for k, p in model.named_parameters()}


def _train(model, loss_fn) -> tuple[np.ndarray, dict, dict]:
    """(losses, first step's gradients, final state) of STEPS Adam steps in one process."""
    opt = W.adam(model)
    losses, grads = [], None
    for step in range(W.STEPS):
        loss = loss_fn(model)
        loss.backward()
        if step == 0:
            grads = _grads(model)
            grads["norm"] = float(nn.utils.clip_grad_norm_(model.parameters(), 1e9))
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return np.array(losses), grads, W.state(model)


@functools.lru_cache(maxsize=None)
def mlp_reference():
    x, y = (kiln.tensor(a) for a in W.mlp_data(N))
    return _train(W.mlp(), lambda m: F.mse_loss(m(x), y))


@functools.lru_cache(maxsize=None)
def mlp_rows_reference():
    """The whole batch's mean squared error and each rank's rows' share of it."""
    x, y = (kiln.tensor(a) for a in W.mlp_data(N))
    shares = []

    def loss_fn(m):
        sq = (m(x) - y) ** 2
        shares.append([float(sq[r * 4:(r + 1) * 4].sum() / y.numel()) for r in range(N)])
        return sq.mean()
    losses, grads, state = _train(W.mlp(), loss_fn)
    return np.array(shares), losses, grads, state


@functools.lru_cache(maxsize=None)
def transformer_reference():
    batch = W.tokens()
    return _train(W.transformer(0), lambda m: W.lm_loss(m, batch))


def test_single_process_references_match_torch():
    """The chain's first link: kiln's single-process runs are torch's (same weights, data)."""
    model = twin(W.state(W.transformer(0)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(W.STEPS):
        loss = lm_loss(model, torch.from_numpy(W.tokens()))
        loss.backward()
        if step == 0:
            grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    kiln_losses, kiln_grads, kiln_state = transformer_reference()
    np.testing.assert_allclose(kiln_losses, losses, rtol=1e-10)
    for key, value in grads.items():
        np.testing.assert_allclose(kiln_grads[key], value, rtol=1e-8, atol=1e-11, err_msg=key)
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(kiln_state[key], value.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=key)

    mlp = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 5)).double()
    weights = W.state(W.mlp())
    mlp.load_state_dict({k.replace("in_proj", "0").replace("out_proj", "2"): torch.from_numpy(v)
                         for k, v in weights.items()})
    x, y = (torch.from_numpy(a) for a in W.mlp_data(N))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    losses = []
    for _ in range(W.STEPS):
        loss = torch.nn.functional.mse_loss(mlp(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    np.testing.assert_allclose(mlp_reference()[0], losses, rtol=1e-10)


# ----------------------------------------------------------------------------- two ranks

def test_mlp_colwise_rowwise_equals_one_process(ranks):
    """tensor_parallel_example: in_proj colwise, out_proj rowwise, the same batch on every
    rank; the DTensor parameters hold the right pieces and train as one process does."""
    got = _results(ranks, "mlp")
    losses, grads, state = mlp_reference()
    for r in range(N):
        assert list(got[r]["mlp_placements"]) == ["S(0)", "S(0)", "S(1)", "R"]
        # in_proj 32 x 10 -> 16 rows each; out_proj 5 x 32 -> 16 columns each; bias whole
        np.testing.assert_array_equal(got[r]["mlp_local_shapes"],
                                      [[16, 10], [16, 0], [5, 16], [5, 0]])
        assert got[r]["mlp_all_dtensor_params"] and got[r]["mlp_state_dict_dtensor"].all()
        np.testing.assert_array_equal(got[r]["mlp_in_weight_local"],
                                      W.state(W.mlp())["in_proj.weight"][r * 16:(r + 1) * 16])
        np.testing.assert_allclose(got[r]["mlp_losses"], losses, rtol=RTOL)
        _assert_grads(got[r], "mlp", grads, f"rank {r} gradient")
        _assert_same(_prefixed(got[r], "mlp_state"), state, f"rank {r} state")


def test_mlp_on_row_shards_equals_one_process_on_the_batch(ranks):
    """sequence_parallel_example: the input is Shard(0) (each rank its rows), colwise all-gathers
    it, rowwise reduce-scatters the output (its bias gradient all-reduced)."""
    got = _results(ranks, "mlp_sequence")
    shares, losses, grads, state = mlp_rows_reference()
    for r in range(N):
        np.testing.assert_allclose(got[r]["mlp_seq_losses"], shares[:, r], rtol=RTOL)
        _assert_grads(got[r], "mlp_seq", grads, f"rank {r} gradient")
        _assert_same(_prefixed(got[r], "mlp_seq_state"), state, f"rank {r} state")
    np.testing.assert_allclose(got[0]["mlp_seq_losses"] + got[1]["mlp_seq_losses"], losses,
                               rtol=RTOL)


def test_transformer_tensor_parallel_equals_one_process(ranks):
    """Attention wq/wk/wv colwise, wo rowwise; feed-forward w1/w3 colwise (an fnmatch key),
    w2 rowwise; rowwise token embedding, colwise output projection gathered to Replicate."""
    got = _results(ranks, "transformer")
    losses, grads, state = transformer_reference()
    for r in range(N):
        placements = list(got[r]["transformer_placements"])
        # 11 vocabulary rows split 6 + 5 (torch.chunk), 20 hidden features 10 + 10
        rows = 6 if r == 0 else 5
        assert f"tok_embeddings.weight:S(0):[{rows}, 8]" in placements
        assert f"output.weight:S(0):[{rows}, 8]" in placements
        assert "layers.1.feed_forward.w3.weight:S(0):[10, 8]" in placements
        assert "layers.1.feed_forward.w2.weight:S(1):[8, 10]" in placements
        assert "layers.0.attention.wo.weight:S(1):[8, 4]" in placements
        assert len(placements) == 2 + 7 * W.LAYERS      # the norms stay plain parameters
        np.testing.assert_allclose(got[r]["transformer_losses"], losses, rtol=RTOL)
        _assert_grads(got[r], "transformer", grads, f"rank {r} gradient")
        _assert_same(_prefixed(got[r], "transformer_state"), state, f"rank {r} state")


def test_sequence_parallel_transformer_equals_one_process(ranks):
    """fsdp_tp_example's plan: SequenceParallel RMSNorms on Shard(1) activations,
    PrepareModuleInput all-gathers before attention and feed-forward, wo / w2 reduce-scatter,
    wq/wk/wv hand DTensors to the attention (use_local_output=False)."""
    got = _results(ranks, "sequence_parallel")
    losses, grads, state = transformer_reference()
    for r in range(N):
        assert str(got[r]["sp_norm_placement"]) == "(Replicate(),)"
        np.testing.assert_allclose(got[r]["sp_losses"], losses, rtol=RTOL)
        _assert_grads(got[r], "sp", grads, f"rank {r} gradient")
        _assert_same(_prefixed(got[r], "sp_state"), state, f"rank {r} state")


def test_embeddings_rowwise_and_colwise_match_torch(ranks):
    """Rowwise: ids on both ranks' vocabulary halves (out-of-range rows look up zeros before
    the all-reduce) and a padding row on rank 1; colwise: the embedding dim split."""
    got = _results(ranks, "embedding")
    ids = torch.tensor([[0, 7, 10, 5], [6, 3, 7, 9]])
    probe = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 4, 4)))
    for name, pad, local in (("rowwise", 7, [[6, 4], [5, 4]]), ("colwise", None, [[11, 2]] * 2)):
        kiln.manual_seed(4)
        weight = nn.Embedding(W.VOCAB, 4, padding_idx=pad).double().weight.detach().numpy()
        emb = torch.nn.Embedding(W.VOCAB, 4, padding_idx=pad).double()
        emb.weight.data = torch.from_numpy(weight.copy())
        out = emb(ids)
        (out * probe).sum().backward()
        for r in range(N):
            np.testing.assert_array_equal(got[r][f"emb_{name}_local_shape"], local[r])
            np.testing.assert_allclose(got[r][f"emb_{name}_out"], out.detach().numpy(),
                                       rtol=RTOL, err_msg=name)
            np.testing.assert_allclose(got[r][f"emb_{name}_grad"], emb.weight.grad.numpy(),
                                       rtol=RTOL, atol=ATOL, err_msg=name)


def test_full_state_dict_round_trip(ranks):
    """set_model_state_dict(full) of a one-process checkpoint keeps each rank's pieces (the
    rowwise weight's columns); get_model_state_dict(full) gathers them back."""
    got = _results(ranks, "state_dicts")
    weights = W.state(W.mlp(7))
    for r in range(N):
        _assert_same(_prefixed(got[r], "sd_full"), weights, f"rank {r}")
        np.testing.assert_array_equal(got[r]["sd_out_weight_local"],
                                      weights["out_proj.weight"][:, r * 16:(r + 1) * 16])


def test_prepare_module_input_output(ranks):
    """Inputs (positional and keyword) gathered from Shard(1), outputs split back to Shard(1)
    DTensors; the gradients reaching each rank's input halves are the whole ones' halves."""
    got = _results(ranks, "prepare")
    x, y, w, probe = W.prepare_data()
    for r in range(N):
        half = slice(2 * r, 2 * r + 2)
        assert list(got[r]["prepare_out_dtensor"]) == ["True", "(Shard(dim=1),)", "[2, 4, 3]"]
        np.testing.assert_allclose(got[r]["prepare_out"], (x * w + y)[:, half], rtol=RTOL)
        np.testing.assert_allclose(got[r]["prepare_x_grad"], (probe * w)[:, half], rtol=RTOL)
        np.testing.assert_allclose(got[r]["prepare_y_grad"], probe[:, half], rtol=RTOL)
        assert list(got[r]["prepare_output_local"]) == ["Tensor"]
        np.testing.assert_allclose(got[r]["prepare_output_values"], (x * w)[:, half], rtol=RTOL)


def test_colwise_on_uneven_row_shards_matches_torch(ranks):
    got = _results(ranks, "uneven_rows")
    x, probe = W.uneven_data()
    kiln.manual_seed(6)
    weights = W.state(nn.Linear(4, 6).double())
    lin = torch.nn.Linear(4, 6).double()
    lin.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    xt = torch.from_numpy(x).requires_grad_()
    out = lin(xt)
    (out * torch.from_numpy(probe)).sum().backward()
    for r, rows in enumerate((slice(0, 3), slice(3, 5))):
        np.testing.assert_allclose(got[r]["uneven_out"], out.detach().numpy(), rtol=RTOL)
        np.testing.assert_allclose(got[r]["uneven_x_grad"], xt.grad.numpy()[rows], rtol=RTOL)
        _assert_same(_prefixed(got[r], "uneven_grad"),
                     {k: p.grad.numpy() for k, p in lin.named_parameters()}, f"rank {r}")


def test_bfloat16_row_shards_close_to_float64(ranks):
    """bfloat16 parameters and activations (MPI has no bfloat16 sum: the collectives sum in
    float32 and round): the loss and gradients are the float64 ones to bfloat16's precision."""
    got = _results(ranks, "bfloat16")
    shares, _, grads, _ = mlp_rows_reference()
    grads = {k: v for k, v in grads.items() if k != "norm"}
    for r in range(N):
        assert str(got[r]["bf16_dtype"]) == "kiln.bfloat16"
        np.testing.assert_allclose(got[r]["bf16_loss"], shares[0, r], rtol=2e-2)
        ours = _prefixed(got[r], "bf16_grad")
        assert set(ours) == set(grads)
        for key, want in grads.items():
            assert np.abs(ours[key] - want).max() <= 2e-2 * np.abs(want).max(), key


def test_torch_parallelize_module_on_two_processes_equals_kiln(ranks, tmp_path):
    """The strongest check: torch's own parallelize_module (gloo, two spawned processes), with
    and without sequence parallelism, gives every rank kiln's losses and final weights."""
    got = _results(ranks, "transformer")
    _results(ranks, "sequence_parallel")
    proc = launch.torch_reference("tp_torch_ranks.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in range(N):
        theirs = dict(np.load(tmp_path / f"torch_rank{r}.npz"))
        for name in ("transformer", "sp"):
            np.testing.assert_allclose(got[r][f"{name}_losses"], theirs[f"{name}_losses"],
                                       rtol=1e-10)
            ours = _prefixed(got[r], f"{name}_state")
            want = _prefixed(theirs, f"{name}_state")
            assert set(ours) == set(want)
            for key, value in want.items():
                np.testing.assert_allclose(ours[key], value, rtol=1e-8, atol=1e-10,
                                           err_msg=f"rank {r} {name} {key}")


# ----------------------------------------------------------------------------- one rank

@pytest.fixture
def mesh():
    """The default group in this process (world size 1) and its mesh."""
    launch.mpi_or_skip()
    dist.init_process_group()
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_plan_errors_and_warnings(mesh):
    model = W.mlp()
    with pytest.raises(NotImplementedError, match="ColwiseParallel supports nn.Linear"):
        tp.parallelize_module(model, mesh, {"relu": tp.ColwiseParallel()})
    with pytest.warns(UserWarning, match="'hidden' could not be resolved"):
        tp.parallelize_module(model, mesh, {"hidden": tp.RowwiseParallel()})
    with pytest.raises(TypeError, match="ParallelStyle or a dict"):
        tp.parallelize_module(model, mesh, [tp.ColwiseParallel()])
    with pytest.raises(ValueError, match="Shard\\(dim\\) or Replicate\\(\\)"):
        tp.ColwiseParallel(input_layouts="replicate")
    with pytest.raises(ValueError, match="one entry per input"):
        tp.PrepareModuleInput(input_layouts=(Shard(1), Replicate()),
                              desired_input_layouts=(Replicate(),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tp.parallelize_module(model, mesh, {}) is model


def test_plan_paths_match_as_torch_fnmatch(mesh):
    """Each dotted part of a key is an fnmatch pattern over child names; "" is the module."""
    model = W.transformer(0)
    tp.parallelize_module(model, mesh, {"layers.*.feed_forward.w[13]": tp.ColwiseParallel(),
                                        "layers.1.attention.w?": tp.ColwiseParallel()})
    tp.parallelize_module(model.output, mesh, {"": tp.RowwiseParallel()})
    placed = {k: str(p.placements[0]) for k, p in model.named_parameters()
              if isinstance(p, DTensor)}
    want = {f"layers.{i}.feed_forward.w{j}.weight": "S(0)" for i in range(2) for j in (1, 3)}
    want.update({f"layers.1.attention.w{c}.weight": "S(0)" for c in "qkvo"})
    want["output.weight"] = "S(1)"
    assert placed == want


def test_one_rank_is_the_plain_model(mesh):
    """On a one-rank mesh every collective is the identity: the parallelized model computes
    (and differentiates) exactly what the plain one does, and its parameters are DTensors."""
    batch = W.tokens()
    ref_losses, ref_grads, _ = transformer_reference()
    model = W.transformer(0)
    top, _ = W.sp_plans(tp, Shard, Replicate)
    tp.parallelize_module(model, mesh, top)
    for layer in model.layers:
        tp.parallelize_module(layer, mesh, W.sp_plans(tp, Shard, Replicate)[1])
    assert isinstance(model.output.weight, DTensor)
    assert isinstance(model.output.weight, nn.Parameter)
    loss = W.lm_loss(model, batch)
    loss.backward()
    np.testing.assert_allclose(float(loss), ref_losses[0], rtol=RTOL)
    for key, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), ref_grads[key], rtol=RTOL, atol=ATOL,
                                   err_msg=key)
    assert "ColwiseParallel(input_layouts=(Shard(dim=1),)" in repr(top["output"])


def test_old_dtensor_import_path_is_kiln_distributed_tensor():
    """pytorch/examples' TP scripts import init_device_mesh from torch.distributed._tensor."""
    from kiln.distributed._tensor.device_mesh import init_device_mesh as old
    from kiln.distributed._tensor.placement_types import Shard as OldShard
    import kiln.distributed._tensor as shim
    assert old is init_device_mesh and OldShard is Shard and shim.DTensor is DTensor
