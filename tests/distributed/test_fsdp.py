"""FSDP2 (`fully_shard`), DTensor and the distributed state dicts. Two ranks under mpiexec run
tests/distributed/fsdp_ranks.py once; each test compares part of what they wrote with a
single-process kiln run on the concatenated batch (float64), which is itself compared with
torch. World-size-1 runs in this process check the rest."""

from __future__ import annotations

import copy
import functools
import os
import pickle

import numpy as np
import pytest
import torch

import kiln
import kiln.distributed as dist
import kiln.distributed.checkpoint as dcp
import kiln.nn as nn
import kiln.nn.functional as F
import kiln.utils.checkpoint
from kiln.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, get_state_dict,
    set_model_state_dict, set_state_dict)
from kiln.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
from kiln.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor, init_device_mesh
from tests.distributed import fsdp_workloads as W
from tests.distributed import launch
from tests.distributed.fsdp_torch_ranks import lm_loss, twin

N = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launch.rank_outputs("fsdp_ranks.py", N, tmp_path_factory.mktemp("fsdp_ranks"))


_results, _prefixed = launch.section, launch.prefixed


@pytest.fixture
def group():
    """The default group in this process: world size 1."""
    launch.mpi_or_skip()
    dist.init_process_group()
    yield
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- references

@functools.lru_cache(maxsize=None)
def reference_run(steps: int = W.STEPS):
    """Single-process kiln on the concatenated batch: (each rank's half-batch loss before each
    step [steps, N], the full batch's losses, the final state)."""
    model = W.transformer(0)
    opt = W.adam(model)
    halves, full = [], []
    for step in range(steps):
        with kiln.no_grad():
            halves.append([float(W.lm_loss(model, W.tokens(step, r))) for r in range(N)])
        full += W.train(model, opt, 1, start=step)
    return np.array(halves), np.array(full), W.state(model)


def test_single_process_reference_matches_torch():
    """The chain's first link: kiln's single-process run is torch's (same weights, data)."""
    model = twin(W.state(W.transformer(0)), W.VOCAB, W.SEQ, W.LAYERS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(W.STEPS):
        loss = lm_loss(model, torch.from_numpy(W.tokens(step)))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    _, kiln_losses, kiln_state = reference_run()
    np.testing.assert_allclose(kiln_losses, losses, rtol=1e-10)
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(kiln_state[key], value.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=key)


# ----------------------------------------------------------------------------- two ranks

def test_dtensor_shards_as_torch_chunk(ranks):
    got = _results(ranks, "dtensor")
    rank0 = np.arange(15.0).reshape(5, 3)
    cols = np.arange(20.0).reshape(4, 5)
    for r in range(N):
        np.testing.assert_array_equal(got[r]["mesh"], [N, r, 1])
        # torch.chunk: 5 rows on 2 ranks are 3 + 2; the data is rank 0's (src_data_rank=0)
        np.testing.assert_array_equal(got[r]["dt_shard0_local"], rank0[[0, 1, 2]] if r == 0
                                      else rank0[[3, 4]])
        np.testing.assert_array_equal(got[r]["dt_shard0_full"], rank0)
        np.testing.assert_array_equal(got[r]["dt_shard1_local"], cols[:, :3] if r == 0
                                      else cols[:, 3:])
        np.testing.assert_array_equal(got[r]["dt_shard1_full"], cols)
        np.testing.assert_array_equal(got[r]["dt_replicate"], rank0)
        np.testing.assert_array_equal(got[r]["dt_redistributed"], rank0)
        np.testing.assert_array_equal(got[r]["dt_from_local"], [[0.0] * 3] * 2 + [[1.0] * 3] * 2)
        np.testing.assert_array_equal(got[r]["dt_from_local_shape"], [4, 3])


def test_transformer_on_two_ranks_equals_one_process_on_the_whole_batch(ranks):
    got = _results(ranks, "transformer")
    halves, _, reference = reference_run()
    for r in range(N):
        assert list(got[r]["transformer_classes"]) == ["FSDPTransformer", "FSDPBlock",
                                                       "Attention"]
        assert got[r]["transformer_all_dtensor"] and got[r]["transformer_is_fsdp"].all()
        # each rank's loss is its own half of the batch, before each step
        np.testing.assert_allclose(got[r]["transformer_losses"], halves[:, r], rtol=1e-10)
        full = _prefixed(got[r], "transformer")
        assert set(full) == set(reference)
        for key, want in reference.items():
            np.testing.assert_allclose(full[key], want, rtol=1e-9, atol=1e-12,
                                       err_msg=f"rank {r} {key}")
        # the 11-row output projection is split 6 + 5; the shards are the full tensor's rows
        assert int(got[r]["output_weight_local_rows"]) == (6 if r == 0 else 5)
        rows = slice(0, 6) if r == 0 else slice(6, 11)
        np.testing.assert_array_equal(got[r]["tok_embeddings_local"],
                                      got[r]["tok_embeddings_full"][rows])
    # full + cpu_offload: rank 0 gets everything, the others an empty dict (as torch)
    assert int(got[0]["offloaded_keys"]) == len(reference) and int(got[1]["offloaded_keys"]) == 0


def test_torch_fully_shard_on_two_processes_equals_kiln_on_two_ranks(ranks, tmp_path):
    """The strongest check: torch's own FSDP2 (gloo, two spawned processes) on the same
    weights and batches gives every rank kiln's losses and the same final weights."""
    got = _results(ranks, "transformer")
    proc = launch.torch_reference("fsdp_torch_ranks.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in range(N):
        theirs = dict(np.load(tmp_path / f"torch_rank{r}.npz"))
        np.testing.assert_allclose(got[r]["transformer_losses"], theirs["losses"], rtol=1e-10)
        ours = _prefixed(got[r], "transformer")
        for key, want in _prefixed(theirs, "state").items():
            np.testing.assert_allclose(ours[key], want, rtol=1e-8, atol=1e-10,
                                       err_msg=f"rank {r} {key}")


def test_meta_device_init_then_rank0_weights(ranks):
    got = _results(ranks, "meta_init")
    halves, _, _ = reference_run()
    for r in range(N):
        assert str(got[r]["meta_dtype"]) == "float64"
        np.testing.assert_allclose(got[r]["meta_losses"], halves[:2, r], rtol=1e-10)


def test_cuda_tensors_go_through_nccl(ranks):
    """On fake CUDA with the stand-in NCCL (no GPU here): the same numbers, through NCCL's
    all-gather and reduce-scatter."""
    got = _results(ranks, "cuda_fake")
    halves, _, reference = reference_run(2)
    for r in range(N):
        assert str(got[r]["cuda_device"]) == "cuda:0"
        assert list(got[r]["cuda_nccl_calls"]) == ["allGather", "reduceScatter"]
        np.testing.assert_allclose(got[r]["cuda_losses"], halves[:, r], rtol=1e-10)
        for key, want in reference.items():
            np.testing.assert_allclose(_prefixed(got[r], "cuda")[key], want, rtol=1e-9,
                                       atol=1e-12, err_msg=key)


def test_clip_grad_norm_over_shards_is_the_whole_gradients_norm(ranks):
    """FSDP2's examples clip with torch.nn.utils.clip_grad_norm_: every rank gets the norm of
    the whole (averaged) gradients and clips its piece by it, as one process would."""
    got = _results(ranks, "clip")
    for norm_type in (2.0, 1.0, float("inf")):
        kiln.manual_seed(5)
        model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)).double()
        x, y = W.mlp_data()
        F.mse_loss(model(kiln.tensor(x[:, :5]).double()),
                   kiln.tensor(y[:, :1]).double()).backward()
        total = kiln.nn.utils.clip_grad_norm_(model.parameters(), 0.01, norm_type=norm_type)
        for r in range(N):
            np.testing.assert_allclose(got[r][f"clip_total_{norm_type}"], total.numpy(),
                                       rtol=1e-10, err_msg=f"rank {r} norm {norm_type}")
            for key, p in model.named_parameters():
                np.testing.assert_allclose(_prefixed(got[r], f"clip_{norm_type}")[key],
                                           p.grad.numpy(), rtol=1e-9, atol=1e-15,
                                           err_msg=f"rank {r} {key} norm {norm_type}")


def test_uneven_shards_train_like_one_process(ranks):
    got = _results(ranks, "uneven")
    kiln.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    w0 = model[0].weight.detach().numpy().copy()
    # Linear(5, 3): weight rows 2 + 1, bias 2 + 1; Linear(3, 1): rank 1 holds nothing
    assert got[0]["uneven_local_shapes"].tolist() == [[2, 5], [2, 0], [1, 3], [1, 0]]
    assert got[1]["uneven_local_shapes"].tolist() == [[1, 5], [1, 0], [0, 3], [0, 0]]
    np.testing.assert_array_equal(got[0]["uneven_local_values"], w0[:2])
    np.testing.assert_array_equal(got[1]["uneven_local_values"], w0[2:])
    opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = W.mlp_data()
    for _ in range(3):
        loss = F.mse_loss(model(kiln.tensor(x[:, :5]).double()), kiln.tensor(y[:, :1]).double())
        loss.backward()
        opt.step()
        opt.zero_grad()
    for r in range(N):
        for key, want in W.state(model).items():
            np.testing.assert_allclose(_prefixed(got[r], "uneven")[key], want, rtol=1e-10,
                                       err_msg=f"rank {r} {key}")


def test_mixed_precision_gathers_bfloat16_and_reduces_float32(ranks):
    got = _results(ranks, "mixed_precision")
    for r in range(N):
        # inside forward: bfloat16 weights and inputs (cast by fully_shard), bfloat16 output
        assert list(got[r]["mp_forward_dtypes"]) == ["bfloat16"] * 3
        assert list(got[r]["mp_unsharded_dtypes"]) == ["bfloat16", "Parameter"]
        assert got[r]["mp_resharded"]
        assert list(got[r]["mp_grad_dtypes"]) == ["float32"] * 4
    # the same arithmetic by hand: each rank's half through a bfloat16 copy of the weights,
    # its bfloat16 gradients cast to float32 and averaged over the ranks
    master = W.mlp()
    grads = []
    for r in range(N):
        copy16 = copy.deepcopy(master).to(kiln.bfloat16)
        x, y = W.mlp_data(r)
        F.mse_loss(copy16(kiln.tensor(x).to(kiln.bfloat16)).float(), kiln.tensor(y)).backward()
        grads.append([p.grad.float().numpy() for p in copy16.parameters()])
    want = [(a + b) / 2 for a, b in zip(*grads)]
    full32 = []
    for r in range(N):
        for i, w in enumerate(want):
            np.testing.assert_allclose(got[r][f"mp_grad/{i}"], w, rtol=1e-6, atol=1e-7)
    # and the bfloat16 rounding is there: float32 gradients differ
    for r in range(N):
        x, y = W.mlp_data(r)
        m32 = copy.deepcopy(master)
        F.mse_loss(m32(kiln.tensor(x)), kiln.tensor(y)).backward()
        full32.append(m32[0].weight.grad.numpy())
    assert not np.allclose(got[0]["mp_grad/0"], (full32[0] + full32[1]) / 2, rtol=1e-6)
    # float16 params and reduce dtype: summed in float32, rounded to float16
    grads = []
    for r in range(N):
        copy16 = copy.deepcopy(master).to(kiln.float16)
        x, y = W.mlp_data(r)
        F.mse_loss(copy16(kiln.tensor(x).to(kiln.float16)).float(), kiln.tensor(y)).backward()
        grads.append([p.grad.float().numpy() for p in copy16.parameters()])
    for i, (a, b) in enumerate(zip(*grads)):
        want = ((a + b) / 2).astype(np.float16).astype(np.float32)
        for r in range(N):
            np.testing.assert_array_equal(got[r][f"fp16_grad/{i}"], want)


def test_reshard_after_forward_options(ranks):
    got = _results(ranks, "reshard_options")
    halves, _, _ = reference_run()
    for r in range(N):
        # False: layers stay gathered after forward; None on the root: the root stays gathered
        assert list(got[r]["kept_gathered"]) == ["Parameter", "Parameter"]
        assert got[r]["resharded_after_backward"]
        assert str(got[r]["root_resharded"]) == "ShardedParameter"       # True on the root
        np.testing.assert_allclose(got[r]["kept_losses"], halves[:2, r], rtol=1e-10)


def test_gradient_accumulation_and_no_sync(ranks):
    got = _results(ranks, "accumulation")
    model = W.transformer(0)
    for step in range(2):
        W.lm_loss(model, W.tokens(step)).backward()
    for r in range(N):
        assert got[r]["no_sync_grads_none"]
        for name, p in model.named_parameters():
            want = p.grad.numpy()
            np.testing.assert_allclose(got[r][f"accumulated/{name}"], want, rtol=1e-9,
                                       atol=1e-13, err_msg=name)
            np.testing.assert_allclose(got[r][f"no_sync/{name}"], want, rtol=1e-9,
                                       atol=1e-13, err_msg=name)


def test_state_dict_round_trips_resume_training_exactly(ranks):
    got = _results(ranks, "state_dicts")
    halves, _, reference = reference_run(4)
    names = sorted(n for n, _ in W.transformer(0).named_parameters())
    for r in range(N):
        np.testing.assert_array_equal(got[r]["roundtrip_outputs_after"],
                                      got[r]["roundtrip_outputs_before"])
        assert sorted(got[r]["optim_sd_keys"]) == names
        assert got[r]["optim_sd_exp_avg"].shape == (W.VOCAB, W.DIM)      # gathered
        assert got[r]["sharded_osd_is_dtensor"]
        np.testing.assert_allclose(got[r]["resumed_losses_uninterrupted"], halves[2:, r],
                                   rtol=1e-10)
        uninterrupted = _prefixed(got[r], "resumed_uninterrupted")
        for how in ("full", "broadcast", "sharded"):
            np.testing.assert_array_equal(got[r][f"resumed_losses_{how}"],
                                          got[r]["resumed_losses_uninterrupted"], err_msg=how)
            resumed = _prefixed(got[r], f"resumed_{how}")
            for key, want in uninterrupted.items():
                np.testing.assert_array_equal(resumed[key], want, err_msg=f"{how} {key}")
        for key, want in reference.items():
            np.testing.assert_allclose(uninterrupted[key], want, rtol=1e-9, atol=1e-12)


def test_dcp_checkpoint_resumes_on_two_ranks_and_loads_on_one(ranks, group):
    got = _results(ranks, "dcp")
    for r in range(N):
        np.testing.assert_array_equal(got[r]["dcp_losses_loaded"],
                                      got[r]["dcp_losses_uninterrupted"])
    path = str(got[0]["dcp_dir"])
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.kiln", "__1_0.kiln"]
    # this process is one rank: it reads both ranks' rows into a plain model
    _, _, want = reference_run(2)
    model = W.transformer(seed=4)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=path)
    for key, value in want.items():
        np.testing.assert_allclose(model.state_dict()[key].numpy(), value, rtol=1e-9,
                                   atol=1e-12, err_msg=key)
    # and into a model sharded over this one rank, with the optimizer's state
    sharded = fully_shard(W.transformer(seed=4))
    opt = W.adam(sharded)
    state = {"model": get_model_state_dict(sharded), "optim": get_optimizer_state_dict(sharded,
                                                                                        opt)}
    dcp.load(state, checkpoint_id=path)
    assert float(state["optim"]["state"]["output.weight"]["step"]) == 2.0
    assert state["optim"]["param_groups"][0]["lr"] == 1e-2
    with pytest.raises(kiln.serialization.CheckpointError, match="is missing"):
        dcp.load(state, checkpoint_id=os.path.dirname(path))


# ----------------------------------------------------------------------------- one process

@pytest.mark.parametrize("make_opt", [
    lambda ps: kiln.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: kiln.optim.Adam(ps, lr=1e-2),
    lambda ps: kiln.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)], ids=["sgd", "adam", "adamw"])
def test_world_size_one_equals_the_plain_model(group, make_opt):
    plain = W.transformer(0)
    sharded = W.transformer(0)
    for layer in sharded.layers:
        fully_shard(layer)
    fully_shard(sharded)
    for model in (plain, sharded):
        opt = make_opt(model.parameters())
        for step in range(2):
            W.lm_loss(model, W.tokens(step, 0)).backward()
            opt.step()
            opt.zero_grad()
    got = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    for key, want in W.state(plain).items():
        np.testing.assert_array_equal(got[key].numpy(), want, err_msg=key)


class CalledThrice(nn.Module):
    """One fully_shard'ed block used three times, once under activation checkpointing."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.block(self.block(x))
        return self.head(kiln.utils.checkpoint.checkpoint(self.block, h, use_reentrant=False))


def test_a_block_called_several_times_and_recomputed(group):
    """Each call gathers and frees the block again; backward gathers it again for each use
    (and for the recomputation) and reduces its gradient once, when it is complete."""
    kiln.manual_seed(0)
    plain = CalledThrice().double()
    sharded = copy.deepcopy(plain)
    fully_shard(sharded.block)
    fully_shard(sharded)
    x = kiln.randn(3, 4, dtype=kiln.float64)
    for model in (plain, sharded):
        model(x).pow(2).sum().backward()
    for (name, want), got in zip(plain.named_parameters(), sharded.parameters()):
        np.testing.assert_allclose(got.grad.full_tensor().numpy(), want.grad.numpy(),
                                   rtol=1e-12, err_msg=name)


class HalfUsed(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


def test_parameters_unused_in_forward_keep_no_gradient(group):
    """A group whose gradients never all arrive is reduced when backward ends."""
    kiln.manual_seed(0)
    plain = nn.Sequential(HalfUsed(), nn.Tanh()).double()
    sharded = copy.deepcopy(plain)
    fully_shard(sharded[0])
    fully_shard(sharded)
    x = kiln.randn(4, 3, dtype=kiln.float64)
    for model in (plain, sharded):
        model(x).sum().backward()
    assert sharded[0].unused.weight.grad is None and sharded[0].unused.bias.grad is None
    assert isinstance(sharded[0].used.weight, DTensor)         # resharded at the end
    np.testing.assert_array_equal(sharded[0].used.weight.grad.full_tensor().numpy(),
                                  plain[0].used.weight.grad.numpy())


def test_module_state_dict_holds_dtensors_and_loads_back(group):
    model = fully_shard(nn.Linear(4, 3).double())
    assert isinstance(model, FSDPModule) and type(model).__name__ == "FSDPLinear"
    assert "FSDPLinear(in_features=4" in repr(model)
    sd = model.state_dict()
    assert all(isinstance(v, DTensor) and v.placements == (Shard(0),) for v in sd.values())
    x = kiln.randn(2, 4, dtype=kiln.float64)
    with kiln.no_grad():        # no backward to come: the root reshards after forward
        before = model(x).numpy()
    assert all(isinstance(p, DTensor) for p in model.parameters())
    saved = {k: DTensor.from_local(v.to_local().clone(), v.device_mesh, v.placements)
             for k, v in sd.items()}
    with kiln.no_grad():
        for p in model.parameters():
            p.zero_()
    assert not np.allclose(model(x).detach().numpy(), before)
    model.load_state_dict(saved)    # into the shards, not the copy the forward left gathered
    np.testing.assert_array_equal(model(x).detach().numpy(), before)
    model.reshard()
    with kiln.no_grad():
        for p in model.parameters():
            p.zero_()
    model.load_state_dict(saved, assign=True)     # the shards adopt the new tensors
    assert all(isinstance(p, DTensor) for p in model.parameters())
    with kiln.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), before)
    opt = kiln.optim.Adam(model.parameters())
    osd = get_optimizer_state_dict(model, opt)   # initializes the state, as torch does
    assert sorted(osd["state"]) == ["bias", "weight"]
    assert osd["param_groups"][0]["params"] == ["weight", "bias"]
    assert float(osd["state"]["weight"]["step"]) == 1.0
    # get_/set_state_dict together; frozen parameters left out on request
    model.bias.requires_grad_(False)
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(ignore_frozen_params=True))
    assert list(msd) == ["weight"]
    keys = set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd,
                          options=StateDictOptions(strict=False))
    assert keys.missing_keys == ["bias"] and keys.unexpected_keys == []
    with kiln.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), before)


def test_mistakes_say_what_to_do(group):
    with pytest.raises(ValueError, match=r"\(2, 1\) must multiply to the world size 1"):
        init_device_mesh("cpu", (2, 1))
    model = fully_shard(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already fully_shard'ed"):
        fully_shard(model)
    with pytest.raises(ValueError, match="shard_placement_fn"):
        fully_shard(nn.Linear(2, 2), shard_placement_fn=lambda p: Shard(1))
    with pytest.raises(RuntimeError, match=r"missing keys \['bias'\]"):
        set_model_state_dict(model, {"weight": kiln.zeros(2, 2)},
                             options=StateDictOptions(full_state_dict=True))
    with pytest.raises(ValueError, match=r"is \[3, 2\], the model's is \[2, 2\]"):
        set_model_state_dict(model, {"weight": kiln.zeros(3, 2), "bias": kiln.zeros(2)},
                             options=StateDictOptions(full_state_dict=True))
    with pytest.raises(ValueError, match="one module per call"):
        fully_shard([nn.Linear(2, 2), nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="reshard_after_forward must be"):
        fully_shard(nn.Linear(2, 2), reshard_after_forward=2)
    fully_shard(nn.Linear(2, 2), offload_policy=CPUOffloadPolicy())     # CPU: nothing to do
    with pytest.raises(TypeError, match="distribute_tensor"):
        DTensor(kiln.zeros(2))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(distribute_tensor(kiln.zeros(2), placements=[Replicate()]))


def test_fully_shard_needs_the_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        fully_shard(nn.Linear(2, 2))
