"""ZeroRedundancyOptimizer, Join and DDP communication hooks. Two ranks under mpiexec run
tests/distributed/zero_ranks.py once and torch's own DDP runs the same on two gloo processes
(zero_torch_ranks.py); the tests compare both with each other and with one process on the
whole batch, in float64. World-size-1 tests run in this process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import kiln
import kiln.distributed as dist
import kiln.nn.functional as F
from tests.distributed import launch
from tests.distributed import zero_workloads as W

N = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero")
    proc = launch.mpiexec(N, [os.path.join(launch.HERE, "zero_ranks.py"), str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [dict(np.load(out / f"rank{r}.npz")) for r in range(N)]
    for r in range(N):
        errors = [str(v) for k, v in got[r].items() if k.startswith("error:")]
        assert not errors, errors[0]
    pytest.importorskip("torch")
    proc = launch.torch_reference("zero_torch_ranks.py", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ref = [dict(np.load(out / f"torch_rank{r}.npz")) for r in range(N)]
    return got, ref


def _prefixed(d: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in d.items() if k.startswith(prefix + "/")}


def _single_process(batches: list[tuple[int, float]], opt_name: str) -> tuple[dict, list]:
    """One process: for each (step, scale), the loss on the rows of that step the running
    ranks hold, times `scale` (the DDP average counts a joined rank as a zero gradient)."""
    model = W.seeded_mlp()
    if opt_name == "adam":
        opt = kiln.optim.Adam(model.parameters(), lr=W.LR)
        sched = kiln.optim.lr_scheduler.StepLR(opt, step_size=W.STEP_SIZE, gamma=W.GAMMA)
    else:
        opt, sched = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), None
    losses = []
    for step, rows, scale in batches:
        x, y = W.data(step)
        opt.zero_grad()
        loss = F.mse_loss(model(kiln.tensor(x[rows])), kiln.tensor(y[rows]))
        (loss * scale).backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss))
    return W.state(model), losses


def _assert_close(got: dict, want: dict, rtol: float, what: str) -> None:
    assert want and set(got) == set(want), (what, sorted(got), sorted(want))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=1e-14, err_msg=f"{what} {k}")


def test_ddp_zero_adam_steplr_equals_one_process_and_torch(runs):
    got, ref = runs
    everything = slice(0, W.BATCH)
    want, losses = _single_process([(s, everything, 1.0) for s in range(W.STEPS)], "adam")
    for r in range(N):
        params = _prefixed(got[r], "zero/param")
        _assert_close(params, want, 1e-10, f"rank {r} vs one process")
        _assert_close(params, _prefixed(ref[r], "zero/param"), 1e-10, f"rank {r} vs torch")
        np.testing.assert_allclose(got[r]["zero/losses"], ref[r]["zero/losses"], rtol=1e-10)
        # torch's partition: each parameter on the same rank
        np.testing.assert_array_equal(got[r]["zero/owners"], ref[r]["zero/owners"])
    # each rank's loss is its half's; their mean is the whole batch's
    np.testing.assert_allclose((got[0]["zero/losses"] + got[1]["zero/losses"]) / 2, losses,
                               rtol=1e-10)
    # state really is sharded: each rank's local optimizer holds about half the elements
    sizes = [int(got[r]["zero/local_params"]) for r in range(N)]
    assert sum(sizes) == sum(v.size for v in want.values()) and max(sizes) < 0.55 * sum(sizes)
    assert float(got[0]["zero/lr"]) == W.LR * W.GAMMA ** (W.STEPS // W.STEP_SIZE)


def test_consolidated_state_dict_has_torchs_layout_and_values(runs):
    got, ref = runs
    mine, theirs = _prefixed(got[0], "zero/state"), _prefixed(ref[0], "zero/state")
    assert set(mine) == set(theirs) and len(mine) == 6 * 3     # 6 parameters x Adam's 3
    for key in theirs:
        assert mine[key].shape == theirs[key].shape and mine[key].dtype == theirs[key].dtype, key
        np.testing.assert_allclose(mine[key], theirs[key], rtol=1e-10, atol=1e-15, err_msg=key)
    for key in ("group_params", "group_keys", "group_lr"):
        np.testing.assert_array_equal(got[0][f"zero/{key}"], ref[0][f"zero/{key}"])


def test_load_state_dict_resumes_exactly(runs):
    """Rank 0 saves the consolidated state with kiln.save; every rank loads it into a new
    ZeroRedundancyOptimizer, and 2 more steps equal those of the optimizer never stopped."""
    got, _ = runs
    for r in range(N):
        continued = _prefixed(got[r], "zero/continued")
        resumed = _prefixed(got[r], "zero/resumed")
        assert set(continued) == set(resumed)
        for k in continued:
            np.testing.assert_array_equal(resumed[k], continued[k], err_msg=k)
            assert not np.array_equal(continued[k], got[r][f"zero/param/{k}"])


def test_zero_on_a_process_group_from_new_group_equals_the_default_group(runs):
    got, _ = runs
    for r in range(N):
        world, group = _prefixed(got[r], "zero_world"), _prefixed(got[r], "zero_group")
        assert world and set(world) == set(group)
        for k in world:
            np.testing.assert_array_equal(group[k], world[k], err_msg=k)


def test_join_uneven_inputs_equals_torch_and_the_initial_world_size_average(runs):
    got, ref = runs
    short, long_ = W.JOIN_BATCHES
    everything, rank1_rows = slice(0, W.BATCH), slice(W.BATCH // 2, W.BATCH)
    # while both run, the whole batch; after rank 0 joins, rank 1's half divided by 2
    plan = [(s, everything, 1.0) for s in range(short)] + \
        [(s, rank1_rows, 0.5) for s in range(short, long_)]
    want, _ = _single_process(plan, "sgd")
    want_running, _ = _single_process(plan[:short] + [(s, rows, 1.0) for s, rows, _ in
                                                      plan[short:]], "sgd")
    for r in range(N):
        assert len(got[r]["join/losses"]) == W.JOIN_BATCHES[r]
        params = _prefixed(got[r], "join/param")
        _assert_close(params, want, 1e-10, f"rank {r} vs one process")
        _assert_close(params, _prefixed(ref[r], "join/param"), 1e-10, f"rank {r} vs torch")
        np.testing.assert_allclose(got[r]["join/losses"], ref[r]["join/losses"], rtol=1e-10)
        # divide_by_initial_world_size=False: the mean over the ranks still running
        running = _prefixed(got[r], "join_running/param")
        _assert_close(running, want_running, 1e-10, f"rank {r} running-ranks average")
        _assert_close(running, _prefixed(ref[r], "join_running/param"), 1e-10,
                      f"rank {r} running-ranks average vs torch")
        # throw_on_early_termination: every rank raises, with torch's messages
        assert str(got[r]["join_throw/error"]) == str(ref[r]["join_throw/error"])
        # with BatchNorm buffers (broadcast from the highest running rank) too
        _assert_close(_prefixed(got[r], "join_bn/param"), _prefixed(ref[r], "join_bn/param"),
                      1e-10, f"rank {r} BatchNorm + Join vs torch")
        # DDP and ZeroRedundancyOptimizer under one Join: torch's result (the joined rank
        # steps its shard with the gradients it last had, as torch's ZeRO join hook does)
        _assert_close(_prefixed(got[r], "join_zero/param"), _prefixed(ref[r], "join_zero/param"),
                      1e-10, f"rank {r} ZeRO + Join vs torch")


def test_comm_hooks(runs):
    got, ref = runs
    for r in range(N):
        none = _prefixed(got[r], "hooks/none")
        allreduce = _prefixed(got[r], "hooks/allreduce")
        fp16 = _prefixed(got[r], "hooks/fp16")
        wrapped = _prefixed(got[r], "hooks/fp16_wrapper")
        for k in none:
            np.testing.assert_array_equal(allreduce[k], none[k], err_msg=k)
            np.testing.assert_array_equal(got[r][f"hooks/torch_style/{k}"], none[k], err_msg=k)
            # torch: fp16_compress_wrapper(allreduce_hook) is fp16_compress_hook
            np.testing.assert_array_equal(wrapped[k], fp16[k], err_msg=k)
        # float16 rounding of the gradients: close to the exact run, equal to torch's hook
        _assert_close(fp16, _prefixed(ref[r], "hooks/fp16"), 1e-6, f"rank {r} fp16 vs torch")
        assert any(not np.array_equal(fp16[k], none[k]) for k in none)
        for k in none:      # gradients rounded to float16 (11 bits), 3 steps of lr 0.1
            np.testing.assert_allclose(fp16[k], none[k], rtol=0, atol=1e-4, err_msg=k)
        # one bucket of all 6 parameters (187 elements) per backward, seen by the hook
        np.testing.assert_array_equal(got[r]["hooks/seen"], [[0, 1, 6, 187, 187]] * 3)
        assert str(got[r]["hooks/bf16_error"]).startswith(
            "bf16_compress_hook: kiln's all-reduce does not take bfloat16")


# ----------------------------------------------------------------------------- one process

@pytest.fixture
def world_of_one(monkeypatch):
    launch.mpi_or_skip()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    dist.init_process_group()
    yield
    dist.destroy_process_group()


def test_zero_on_one_rank_is_the_local_optimizer(world_of_one):
    from kiln.distributed.optim import ZeroRedundancyOptimizer
    from kiln.nn.parallel import DistributedDataParallel as DDP
    models = [W.seeded_mlp(), DDP(W.seeded_mlp())]
    opts = [kiln.optim.AdamW(models[0].parameters(), lr=0.02, weight_decay=0.1),
            ZeroRedundancyOptimizer(models[1].parameters(), kiln.optim.AdamW, lr=0.02,
                                    weight_decay=0.1)]
    for step in range(3):
        for model, opt in zip(models, opts):
            x, y = W.data(step)
            opt.zero_grad()
            F.mse_loss(model(kiln.tensor(x)), kiln.tensor(y)).backward()
            opt.step()
    for k, v in W.state(models[0]).items():
        np.testing.assert_array_equal(W.state(models[1].module)[k], v)
    with pytest.raises(RuntimeError, match=r"consolidate_state_dict\(to=0\)"):
        opts[1].state_dict()
    opts[1].consolidate_state_dict()
    mine, plain = opts[1].state_dict(), opts[0].state_dict()
    assert list(mine["state"]) == list(plain["state"])
    for i, entry in plain["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(mine["state"][i][key].numpy(), value.numpy())
    with pytest.raises(ValueError, match="overlap_with_ddp=True"):
        ZeroRedundancyOptimizer(models[1].parameters(), kiln.optim.Adam, overlap_with_ddp=True)


def test_add_param_group_on_one_rank(world_of_one):
    from kiln.distributed.optim import ZeroRedundancyOptimizer
    model = W.seeded_mlp()
    first, rest = list(model[0].parameters()), [p for m in (model[2], model[4])
                                                for p in m.parameters()]
    opt = ZeroRedundancyOptimizer(first, kiln.optim.SGD, lr=0.1)
    opt.add_param_group({"params": rest, "lr": 0.01})
    assert len(opt.optim.param_groups) == 2 and opt.optim.param_groups[1]["lr"] == 0.01
    x, y = W.data(0)
    before = [p.detach().numpy().copy() for p in rest]
    F.mse_loss(model(kiln.tensor(x)), kiln.tensor(y)).backward()
    opt.step()
    for p, b in zip(rest, before):
        np.testing.assert_allclose(p.detach().numpy(), b - 0.01 * p.grad.numpy(), rtol=1e-14)


def test_join_and_futures_of_collectives_on_one_rank(world_of_one):
    from kiln.distributed.algorithms.join import Join
    from kiln.nn.parallel import DistributedDataParallel as DDP
    with pytest.raises(ValueError, match="at least one joinable"):
        Join([])
    with pytest.raises(TypeError, match="is not a Joinable"):
        Join([W.seeded_mlp()])
    model, plain = DDP(W.seeded_mlp()), W.seeded_mlp()
    x = kiln.tensor(W.data(0)[0])
    with model.join(divide_by_initial_world_size=False):
        model(x).sum().backward()
    plain(x).sum().backward()
    np.testing.assert_allclose(model.module[0].weight.grad.numpy(),
                               plain[0].weight.grad.numpy(), rtol=1e-14)
    t = kiln.tensor([1.5, 2.0])
    fut = dist.all_reduce(t, async_op=True).get_future().then(lambda f: f.value()[0] * 2)
    np.testing.assert_array_equal(fut.wait().numpy(), [3.0, 4.0])
    from kiln.futures import collect_all, wait_all
    a, b = kiln.tensor([1.0]), kiln.tensor([2.0])
    got = wait_all([dist.all_reduce(a, async_op=True).get_future(),
                    dist.all_reduce(b, async_op=True).get_future()])
    assert [float(t[0]) for t in got] == [1.0, 2.0]
    both = collect_all([dist.broadcast(a, src=0, async_op=True).get_future()])
    assert both.wait(timeout=30)[0].value()[0] is a


def test_torch_names_under_kiln_run(tmp_path):
    """`torch.distributed.optim.ZeroRedundancyOptimizer`, `torch.distributed.algorithms.join`
    and the comm hooks import as kiln's under `kiln run`."""
    script = tmp_path / "names.py"
    script.write_text(
        "import torch\n"
        "from torch.distributed.optim import ZeroRedundancyOptimizer\n"
        "from torch.distributed.algorithms.join import Join, Joinable, JoinHook\n"
        "from torch.distributed.algorithms.ddp_comm_hooks import default_hooks\n"
        "import kiln.distributed.optim, kiln.distributed.algorithms.join as j\n"
        "assert ZeroRedundancyOptimizer is kiln.distributed.optim.ZeroRedundancyOptimizer\n"
        "assert Join is j.Join and Joinable is j.Joinable and JoinHook is j.JoinHook\n"
        "assert issubclass(torch.nn.parallel.DistributedDataParallel, Joinable)\n"
        "print(default_hooks.fp16_compress_hook.__module__)\n")
    proc = subprocess.run([sys.executable, "-m", "kiln", "run", str(script)], env=launch.env(),
                          capture_output=True, text=True, timeout=60, cwd=launch.ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "kiln.distributed.algorithms.ddp_comm_hooks.default_hooks"


def test_torch_script_under_kiln_run_equals_torch(tmp_path):
    """zero_script.py, a PyTorch script (mp.spawn + gloo, DDP with allreduce_hook,
    ZeroRedundancyOptimizer(Adam) + StepLR, Join with 3 and 5 batches, consolidated state
    dict), run under torch and unmodified under `kiln run`: the same numbers."""
    launch.mpi_or_skip()
    pytest.importorskip("torch")
    (tmp_path / "torch").mkdir()
    (tmp_path / "kiln").mkdir()
    proc = launch.torch_reference("zero_script.py", tmp_path / "torch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "kiln", "run",
                           os.path.join(launch.HERE, "zero_script.py"), str(tmp_path / "kiln")],
                          env=launch.env(), capture_output=True, text=True, timeout=120,
                          cwd=launch.ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in range(N):
        want = dict(np.load(tmp_path / "torch" / f"script_rank{r}.npz"))
        got = dict(np.load(tmp_path / "kiln" / f"script_rank{r}.npz"))
        assert set(got) == set(want) and len(got["losses"]) == 3 + 2 * r
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-15, err_msg=k)
    assert len([k for k in got if k.startswith("state/")]) == 0      # rank 1 holds none
    assert len([k for k in dict(np.load(tmp_path / "kiln" / "script_rank0.npz"))
                if k.startswith("state/")]) == 4 * 3
