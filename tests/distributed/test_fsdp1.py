"""FSDP1 (`FullyShardedDataParallel`), the activation-checkpoint wrappers and dcp's older names.
Two ranks under mpiexec run tests/distributed/fsdp1_ranks.py once, and torch's own FSDP1 runs
on two gloo processes (fsdp1_torch_ranks.py) once; each test compares part of what they wrote
with a single-process kiln run on the whole batch (float64) and with torch. World-size-1 runs
in this process check the rest."""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import pytest
import torch

import kiln
import kiln.distributed as dist
import kiln.distributed.checkpoint as dcp
import kiln.nn as nn
from kiln.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl, CheckpointWrapper, OffloadWrapper, apply_activation_checkpointing,
    checkpoint_wrapper, offload_wrapper)
from kiln.distributed.fsdp import FullyShardedDataParallel as FSDP
from kiln.distributed.fsdp import (
    MixedPrecision, OptimStateKeyType, ShardingStrategy, StateDictType, wrap as fsdp_wrap)
from kiln.distributed.tensor import DTensor
from tests.distributed import fsdp_workloads as W
from tests.distributed import launch
from tests.distributed.fsdp_torch_ranks import TorchBlock, lm_loss, twin

N = 2
STRATEGIES = ("full", "grad_op", "no_shard", "full_ac", "hybrid")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launch.rank_outputs("fsdp1_ranks.py", N, tmp_path_factory.mktemp("fsdp1_ranks"))


@pytest.fixture(scope="module")
def torch_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp1_torch_ranks")
    proc = launch.torch_reference("fsdp1_torch_ranks.py", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [dict(np.load(out / f"torch_rank{r}.npz")) for r in range(N)]


_results, _prefixed = launch.section, launch.prefixed


def _assert_state(got: dict, want: dict, what: str, rtol: float = 1e-10) -> None:
    assert set(got) == set(want), what
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=1e-12,
                                   err_msg=f"{what} {key}")


@pytest.fixture
def group():
    """The default group in this process: world size 1."""
    launch.mpi_or_skip()
    dist.init_process_group()
    yield
    dist.destroy_process_group()


@functools.lru_cache(maxsize=None)
def reference_run():
    """Single-process kiln, AdamW, on the whole batch: (each rank's half-batch loss before
    each step [steps, N], the final state)."""
    model = W.transformer(0)
    opt = kiln.optim.AdamW(model.parameters(), lr=1e-2)
    halves = []
    for step in range(W.STEPS):
        with kiln.no_grad():
            halves.append([float(W.lm_loss(model, W.tokens(step, r))) for r in range(N)])
        W.train(model, opt, 1, start=step)
    return np.array(halves), W.state(model)


# ----------------------------------------------------------------------------- two ranks

def test_auto_wrap_policies_make_torchs_units(ranks, torch_ranks):
    got = _results(ranks, "wrapping")
    for r in range(N):
        for policy in ("layers", "size", "module", "lambda", "custom"):
            assert list(got[r][f"wrap_{policy}"]) == list(torch_ranks[r][f"wrap_{policy}"]), \
                policy
        assert list(got[r]["wrap_layers"]) == ["", "_fsdp_wrapped_module.layers.0",
                                               "_fsdp_wrapped_module.layers.1"]
        # parameters keep the model's names and are dim-0 shards
        assert list(got[r]["param_names"]) == list(reference_run()[1])
        assert got[r]["all_sharded"]
    # model.apply(init) initializes the whole parameters: one process's draws
    plain = W.transformer(0)
    kiln.manual_seed(3)
    plain.apply(W.init_normal)
    for r in range(N):
        _assert_state(_prefixed(got[r], "apply"), W.state(plain), f"apply rank {r}", rtol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_training_on_two_ranks_equals_one_process_and_torch_fsdp1(ranks, torch_ranks,
                                                                   strategy):
    """FULL_SHARD (rank 1 built from other weights, synced by sync_module_states),
    SHARD_GRAD_OP, NO_SHARD, FULL_SHARD with activation checkpointing and HYBRID_SHARD (both
    ranks on one node: FULL_SHARD): every rank's loss
    is its half of the batch's, and the FULL_STATE_DICT (rank0_only) is the one-process
    model's and torch FSDP1's."""
    got = _results(ranks, "train")
    halves, reference = reference_run()
    for r in range(N):
        np.testing.assert_allclose(got[r][f"{strategy}_losses"], halves[:, r], rtol=1e-10)
        np.testing.assert_allclose(got[r][f"{strategy}_losses"], torch_ranks[r]["losses"],
                                   rtol=1e-10)
        assert int(got[r][f"{strategy}_keys_on_rank"]) == int(torch_ranks[r]["keys_on_rank"])
    assert int(got[1][f"{strategy}_keys_on_rank"]) == 0     # rank0_only
    _assert_state(_prefixed(got[0], strategy), reference, strategy)
    _assert_state(_prefixed(got[0], strategy), _prefixed(torch_ranks[0], "state"),
                  f"{strategy} vs torch")
    if strategy == "full_ac":
        assert int(got[0]["ac_wrappers"]) == W.LAYERS


def test_activation_checkpointed_fsdp_state_dict_keys_are_torchs(ranks, torch_ranks):
    got = _results(ranks, "train")
    assert sorted(_prefixed(got[0], "full_ac")) == sorted(torch_ranks[0]["ac_keys"])


def test_full_state_dict_rank0_file_and_full_optim_state_resume_training(ranks):
    """Rank 0 saves the model (FULL_STATE_DICT, rank0_only) and FSDP.full_optim_state_dict
    after 3 steps; a model built from other weights loads the file on every rank and
    scatter_full_optim_state_dict the optimizer state: steps 4 and 5 are the 5-step run's.
    The same through FSDP.optim_state_dict and optim_state_dict_to_load."""
    got = _results(ranks, "resume")
    halves, reference = reference_run()
    for r in range(N):
        np.testing.assert_allclose(got[r]["resume_losses"], halves[3:, r], rtol=1e-10)
        _assert_state(_prefixed(got[r], "resume"), reference, f"rank {r}")
        # FSDP.optim_state_dict (FULL) + optim_state_dict_to_load(load_directly=True)
        assert got[r]["resume_full_osd_is_whole"]
        np.testing.assert_allclose(got[r]["resume2_losses"], halves[3:, r], rtol=1e-10)
    assert int(got[0]["resume_osd_keys_on_rank"]) == 2 and \
        int(got[1]["resume_osd_keys_on_rank"]) == 0


def test_sharded_checkpoint_with_dcp_older_names_resumes_training(ranks):
    """SHARDED_STATE_DICT (DTensors) + FSDP.optim_state_dict saved by save_state_dict with a
    FileSystemWriter, loaded by load_state_dict with a FileSystemReader and
    optim_state_dict_to_load: steps 4 and 5 are the 5-step run's. LOCAL_STATE_DICT (this
    rank's rows) loads back into another model."""
    got = _results(ranks, "sharded_checkpoint")
    halves, reference = reference_run()
    for r in range(N):
        assert got[r]["sharded_is_dtensor"]
        np.testing.assert_allclose(got[r]["sharded_losses"], halves[3:, r], rtol=1e-10)
        _assert_state(_prefixed(got[r], "sharded"), reference, f"rank {r}")
        _assert_state(_prefixed(got[r], "local"), reference, f"local rank {r}")
    # the 11-row output projection: 6 + 5 rows
    assert [int(got[r]["local_rows"]) for r in range(N)] == [6, 5]


def test_units_under_a_plain_root_save_and_load_the_models_keys(ranks):
    got = _results(ranks, "plain_root")
    for r in range(N):
        _assert_state(_prefixed(got[r], "plain_root"), W.state(W.transformer(0)), f"rank {r}",
                      rtol=0)


@pytest.mark.parametrize("strategy", ["full", "no_shard"])
def test_no_sync_accumulates_then_reduces_the_sum(ranks, strategy):
    got = _results(ranks, "no_sync")
    model = W.transformer(0)
    for r in range(N):
        batch = W.tokens(0, r)
        W.lm_loss(model, batch[:2]).backward()
        W.lm_loss(model, batch[2:]).backward()
    want = {k: p.grad.numpy() / N for k, p in model.named_parameters()}
    for r in range(N):
        _assert_state(_prefixed(got[r], f"nosync_{strategy}"), want, f"rank {r}")


def test_clip_grad_norm_is_the_whole_gradients_norm(ranks):
    got = _results(ranks, "clip")
    model = W.transformer(0)
    W.lm_loss(model, W.tokens(0)).backward()
    total = kiln.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    want = {k: p.grad.numpy() for k, p in model.named_parameters()}
    for r in range(N):
        np.testing.assert_allclose(got[r]["clip_total"], total.numpy(), rtol=1e-10)
        _assert_state(_prefixed(got[r], "clip"), want, f"rank {r}", rtol=1e-9)


def test_sharded_grad_scaler_skips_on_every_rank_when_one_shard_overflows(ranks):
    got = _results(ranks, "scaler")
    model = W.transformer(0)
    W.train(model, kiln.optim.AdamW(model.parameters(), lr=1e-2), 1)
    for r in range(N):
        assert got[r]["scaler_skipped"] and float(got[r]["scaler_scale"]) == 512.0
        # scaled by 512, unscaled by 1/512: exact in float64, so one plain AdamW step
        _assert_state(_prefixed(got[r], "scaler"), W.state(model), f"rank {r}")


def test_bfloat16_param_dtype_follows_torch_fsdp1_loosely(ranks, torch_ranks):
    """bfloat16 forward/backward, float32 reduction and shards: torch's losses to a bfloat16
    step or so (the matmuls round differently)."""
    got = _results(ranks, "bf16")
    halves, _ = reference_run()
    for r in range(N):
        assert str(got[r]["bf16_param_dtype"]) == "kiln.float32"
        np.testing.assert_allclose(got[r]["bf16_losses"], torch_ranks[r]["bf16_losses"],
                                   rtol=1e-2)
        np.testing.assert_allclose(got[r]["bf16_losses"], halves[:3, r], rtol=2e-2)


# ----------------------------------------------------------------------------- one process

def test_checkpoint_wrapper_gradients_and_keys_are_torchs():
    """apply_activation_checkpointing on the blocks (both implementations): torch's state dict
    keys and named_parameters names, and the gradients of the unwrapped model (and torch's)."""
    weights = W.state(W.transformer(0))
    batch = W.tokens(0)
    plain = W.transformer(0)
    W.lm_loss(plain, batch).backward()
    theirs = twin(weights, W.VOCAB, W.SEQ, W.LAYERS)
    from torch.distributed.algorithms._checkpoint import checkpoint_wrapper as tcw
    tcw.apply_activation_checkpointing(theirs, check_fn=lambda m: isinstance(m, TorchBlock))
    lm_loss(theirs, torch.from_numpy(batch)).backward()
    torch_grads = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
    for impl in CheckpointImpl:
        model = W.transformer(0)
        apply_activation_checkpointing(
            model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper,
                                                           checkpoint_impl=impl),
            check_fn=lambda m: isinstance(m, W.Block))
        assert isinstance(model.layers[0], CheckpointWrapper)
        assert list(model.state_dict()) == list(theirs.state_dict())
        assert [k for k, _ in model.named_parameters()] == list(torch_grads)
        W.lm_loss(model, batch).backward()
        for key, p in model.named_parameters():
            name = key.replace("_checkpoint_wrapped_module.", "")
            want = dict(plain.named_parameters())[name].grad.numpy()
            np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-12, atol=1e-15,
                                       err_msg=f"{impl} {key}")
            np.testing.assert_allclose(p.grad.numpy(), torch_grads[key], rtol=1e-9,
                                       atol=1e-12, err_msg=f"{impl} {key} vs torch")
        # the unwrapped model's state dict loads into the wrapped one, and back
        fresh = W.transformer(3)
        apply_activation_checkpointing(fresh, check_fn=lambda m: isinstance(m, W.Block))
        fresh.load_state_dict(plain.state_dict())
        _assert_state(W.state(fresh), W.state(plain), str(impl), rtol=0)


def test_offload_wrapper_keeps_gradients_and_keys():
    plain = W.transformer(0)
    W.lm_loss(plain, W.tokens(0)).backward()
    model = W.transformer(0)
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=offload_wrapper,
                                   check_fn=lambda m: isinstance(m, W.Block))
    assert isinstance(model.layers[1], OffloadWrapper)
    assert list(model.state_dict()) == list(plain.state_dict())
    W.lm_loss(model, W.tokens(0)).backward()
    grads = {k.replace("_checkpoint_wrapped_module.", ""): p.grad.numpy()
             for k, p in model.named_parameters()}
    _assert_state(grads, {k: p.grad.numpy() for k, p in plain.named_parameters()}, "offload",
                  rtol=0)


def test_reentrant_wrapper_passes_keyword_arguments():
    kiln.manual_seed(0)
    lin = nn.Linear(3, 2).double()

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x, *, scale):
            return self.lin(x) * scale

    # an input requiring grad, as reentrant checkpointing needs (without one, torch's and
    # kiln's output requires no grad: "None of the inputs have requires_grad=True")
    x = kiln.randn(4, 3, dtype=kiln.float64, requires_grad=True)
    wrapped = checkpoint_wrapper(Scaled(), checkpoint_impl=CheckpointImpl.REENTRANT)
    wrapped(x, scale=kiln.tensor(3.0, dtype=kiln.float64)).sum().backward()
    got = lin.weight.grad.numpy().copy()
    lin.weight.grad = None
    (lin(x) * 3.0).sum().backward()
    np.testing.assert_allclose(got, lin.weight.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("strategy", [ShardingStrategy.FULL_SHARD,
                                      ShardingStrategy.SHARD_GRAD_OP,
                                      ShardingStrategy.NO_SHARD])
def test_world_size_one_equals_the_plain_model(group, strategy):
    """At world size 1 every strategy trains as the plain model does (SGD with momentum)."""
    plain = W.transformer(0)
    opt = kiln.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    model = FSDP(W.transformer(0), sharding_strategy=strategy,
                 auto_wrap_policy=fsdp_wrap.ModuleWrapPolicy({W.Block}))
    opt2 = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    np.testing.assert_allclose(W.train(model, opt2, 2), W.train(plain, opt, 2), rtol=1e-12)
    _assert_state({k: v.numpy() for k, v in model.state_dict().items()}, W.state(plain),
                  str(strategy), rtol=1e-12)
    assert isinstance(model.module, W.Transformer) and model.check_is_root()
    assert len(FSDP.fsdp_modules(model)) == 3 and FSDP.fsdp_modules(model, root_only=True) == \
        [model]


def test_summon_full_params_writes_back(group):
    model = FSDP(W.transformer(0), auto_wrap_policy=fsdp_wrap.ModuleWrapPolicy({W.Block}))
    with FSDP.summon_full_params(model):
        weight = model.module.layers[0].module.w1.weight
        assert not isinstance(weight, DTensor) and tuple(weight.shape) == (W.HIDDEN, W.DIM)
        with kiln.no_grad():
            weight.mul_(2.0)
    want = W.state(W.transformer(0))["layers.0.w1.weight"] * 2.0
    np.testing.assert_allclose(model.state_dict()["layers.0.w1.weight"].numpy(), want,
                               rtol=0)


def test_enable_wrap_and_size_policy(group):
    with fsdp_wrap.enable_wrap(wrapper_cls=FSDP, mixed_precision=MixedPrecision()):
        inner = fsdp_wrap.wrap(nn.Linear(4, 4))
        assert isinstance(inner, FSDP)
    assert isinstance(fsdp_wrap.wrap(nn.Linear(4, 4)), nn.Linear)      # outside: unchanged
    policy = functools.partial(fsdp_wrap.size_based_auto_wrap_policy, min_num_params=30)
    model = FSDP(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                 auto_wrap_policy=policy)
    # Linear(4, 8) has 40 parameters, Linear(8, 2) 18: only the first gets its own unit
    assert [k for k, m in model.named_modules() if isinstance(m, FSDP)] == \
        ["", "_fsdp_wrapped_module.0"]


def test_refusals_name_the_argument(group, monkeypatch):
    # one node: HYBRID_SHARD is FULL_SHARD; over 2 nodes of 2 ranks it needs a 2-D mesh
    unit = FSDP(nn.Linear(2, 2), sharding_strategy=ShardingStrategy.HYBRID_SHARD)
    assert isinstance(unit.module.weight, DTensor)
    monkeypatch.setattr(dist.process_group, "get_world_size", lambda group=None: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"HYBRID_SHARD.*\(4 ranks, 2 per node\).*2-D device"):
        FSDP(nn.Linear(2, 2), sharding_strategy=ShardingStrategy.HYBRID_SHARD)
    monkeypatch.undo()
    with pytest.raises(TypeError, match="sharding_strategy must be a ShardingStrategy"):
        FSDP(nn.Linear(2, 2), sharding_strategy="FULL_SHARD")
    with pytest.raises(ValueError, match="keep_low_precision_grads"):
        FSDP(nn.Linear(2, 2), mixed_precision=MixedPrecision(keep_low_precision_grads=True))
    with pytest.raises(ValueError, match="already wrapped"):
        FSDP(FSDP(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="takes a FullStateDictConfig"):
        FSDP.set_state_dict_type(FSDP(nn.Linear(2, 2)), StateDictType.FULL_STATE_DICT,
                                 dcp.state_dict.StateDictOptions())


def test_dcp_older_names_round_trip(group, tmp_path):
    model = FSDP(W.transformer(0))
    with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
        state = {"model": model.state_dict()}
    with pytest.warns(FutureWarning, match="save_state_dict.*deprecated"):
        dcp.save_state_dict(state, dcp.FileSystemWriter(tmp_path / "ckpt"),
                            planner=dcp.DefaultSavePlanner())
    other = FSDP(W.transformer(5))
    with FSDP.state_dict_type(other, StateDictType.SHARDED_STATE_DICT):
        target = {"model": other.state_dict()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            dcp.load_state_dict(target, dcp.FileSystemReader(tmp_path / "ckpt"),
                                planner=dcp.DefaultLoadPlanner())
        other.load_state_dict(target["model"])
    _assert_state({k: v.numpy() for k, v in other.state_dict().items()},
                  W.state(W.transformer(0)), "dcp", rtol=0)
    # the new spelling takes the same storage objects
    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp_path / "ckpt2"))
    assert (tmp_path / "ckpt2" / ".metadata").exists()
    with pytest.raises(ValueError, match="custom planners"):
        dcp.save(state, checkpoint_id=tmp_path / "x", planner=object())


def test_buffer_dtype_ignored_modules_and_manual_wrapping(group):
    """MixedPrecision(buffer_dtype): buffers computed in it, FULL_STATE_DICT gives them back in
    their own dtype (as torch); ignored_modules keep whole plain parameters; a unit built with
    enable_wrap/wrap inside a model wrapped later keeps its parameters out of the outer unit."""
    kiln.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).double()
    weights = plain.state_dict()
    with kiln.no_grad():
        plain[1].running_mean.copy_(kiln.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 1 / 3]))
    model = copy.deepcopy(plain)
    with fsdp_wrap.enable_wrap(wrapper_cls=FSDP,
                               mixed_precision=MixedPrecision(buffer_dtype=kiln.float32)):
        model[0] = fsdp_wrap.wrap(model[0])
        model = fsdp_wrap.wrap(model, ignored_modules=[model[2]])
    assert isinstance(model.module[0], FSDP) and not isinstance(model.module[2].weight, DTensor)
    assert model.module[1].running_mean.dtype is kiln.float32
    state = model.state_dict()
    assert state["1.running_mean"].dtype is kiln.float64
    np.testing.assert_array_equal(state["1.running_mean"].numpy(),
                                  np.float32([0.1, 0.2, 0.3, 0.4, 0.5, 1 / 3]))
    np.testing.assert_array_equal(state["0.weight"].numpy(), weights["0.weight"].numpy())
    assert set(state) == set(plain.state_dict())


@pytest.mark.parametrize("init", ["param_init_fn", "reset_parameters"])
def test_meta_device_model_is_materialized_then_loads(group, init):
    """Built on the meta device: param_init_fn runs on every submodule (the usual
    `to_empty(recurse=False)`), or else each submodule holding tensors gets to_empty +
    reset_parameters; then a FULL state dict loads into the shards."""
    with kiln.device("meta"):
        model = W.Transformer()
    fn = (lambda m: m.to_empty(device="cpu", recurse=False)) if init == "param_init_fn" \
        else None
    model = FSDP(model, auto_wrap_policy=fsdp_wrap.ModuleWrapPolicy({W.Block}),
                 param_init_fn=fn)
    assert all(p.device.type == "cpu" for p in model.parameters())
    if init == "reset_parameters":       # initialized: LayerNorm weights are ones again
        np.testing.assert_array_equal(model.state_dict()["norm.weight"].numpy(),
                                      np.ones(W.DIM, np.float32))
    weights = W.transformer(0).float().state_dict()
    model.load_state_dict(weights)
    _assert_state({k: v.numpy() for k, v in model.state_dict().items()},
                  {k: v.numpy() for k, v in weights.items()}, init, rtol=0)


def test_checkpointing_applied_before_fsdp(group):
    """apply_activation_checkpointing first, then FSDP with the blocks as units (each block
    becomes CheckpointWrapper(FSDP(block))): the plain model's steps and state dict keys."""
    plain = W.transformer(0)
    opt = kiln.optim.AdamW(plain.parameters(), lr=1e-2)
    model = W.transformer(0)
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, W.Block))
    model = FSDP(model, auto_wrap_policy=fsdp_wrap.ModuleWrapPolicy({W.Block}))
    assert isinstance(model.module.layers[0], CheckpointWrapper)
    assert isinstance(model.module.layers[0]._checkpoint_wrapped_module, FSDP)
    opt2 = kiln.optim.AdamW(model.parameters(), lr=1e-2)
    np.testing.assert_allclose(W.train(model, opt2, 2), W.train(plain, opt, 2), rtol=1e-12)
    _assert_state({k: v.numpy() for k, v in model.state_dict().items()}, W.state(plain),
                  "checkpointed first", rtol=1e-12)
    assert list(model.state_dict()) == list(plain.state_dict())


def test_rekey_moves_optimizer_state_between_plain_and_fsdp_models(group):
    """A plain model's optimizer state (keyed by index) rekeyed by name loads into the FSDP
    model's optimizer (optim_state_dict_to_load), and the FSDP model's full state rekeyed by
    index is the plain optimizer's own state dict: both continue training alike."""
    plain = W.transformer(0)
    opt = kiln.optim.AdamW(plain.parameters(), lr=1e-2)
    W.train(plain, opt, 2)
    model = FSDP(W.transformer(0), auto_wrap_policy=fsdp_wrap.ModuleWrapPolicy({W.Block}))
    model.load_state_dict(plain.state_dict())
    opt2 = kiln.optim.AdamW(model.parameters(), lr=1e-2)
    named = FSDP.rekey_optim_state_dict(opt.state_dict(), OptimStateKeyType.PARAM_NAME, plain)
    assert list(named["state"]) == [k for k, _ in plain.named_parameters()]
    opt2.load_state_dict(FSDP.optim_state_dict_to_load(model, opt2, named))
    back = FSDP.rekey_optim_state_dict(FSDP.full_optim_state_dict(model, opt2),
                                       OptimStateKeyType.PARAM_ID, plain)
    mine = opt.state_dict()
    assert back["param_groups"] == mine["param_groups"]
    for index, entry in mine["state"].items():
        for name, value in entry.items():
            np.testing.assert_array_equal(np.asarray(back["state"][index][name]),
                                          np.asarray(value), err_msg=f"{index} {name}")
    np.testing.assert_allclose(W.train(model, opt2, 2, start=2), W.train(plain, opt, 2, start=2),
                               rtol=1e-12)
