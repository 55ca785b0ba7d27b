"""Pipeline parallelism (`kiln.distributed.pipelining`). The same 4-block float64 MLP, cut into
2 and into 4 stages, trains three SGD steps with ScheduleGPipe and Schedule1F1B on kiln ranks
(tests/distributed/pipe_ranks.py under mpiexec) and on torch's own pipelining over gloo
processes (pipe_torch_ranks.py): every stage's gradients and weights, the last stage's
per-microbatch losses and merged outputs, and a forward-only step's output must agree (rtol
1e-12; the two frameworks' matmuls round differently in the last bit). So must a model with a
tuple activation, two pipelines over process groups, and torch's pipelining tutorial's
Transformer cut by pipeline() on both sides. What torch's pipelining cannot run (an uneven
split, a single stage with scale_grads=False) and pipeline()'s cuts of a model with a skip
connection are checked against torch's whole model trained on the same microbatches."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed.pipelining

import kiln
from kiln.distributed import pipelining
from tests.distributed import launch
from tests.distributed import pipe_workloads as W

RTOL, ATOL = 1e-12, 1e-14


def _kiln_ranks(n: int, out: str) -> list[dict]:
    return launch.section(launch.rank_outputs("pipe_ranks.py", n, out, timeout=180),
                          "pipelining")


def _torch_ranks(n: int, out: str, what: str = "mlp") -> list[dict]:
    proc = subprocess.run([sys.executable, os.path.join(launch.HERE, "pipe_torch_ranks.py"),
                           out, str(n), what], env=launch.env(), capture_output=True,
                          text=True, timeout=180, cwd=launch.ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [dict(np.load(os.path.join(out, f"torch_{what}_rank{r}.npz"))) for r in range(n)]


def _cached(tmp_path_factory, run):
    """run(n, out, *what) for each (n, *what) once, on first use."""
    cache = {}

    def get(n: int, *what):
        if (n, *what) not in cache:
            cache[n, *what] = run(n, str(tmp_path_factory.mktemp(f"pipe{n}")), *what)
        return cache[n, *what]
    return get


@pytest.fixture(scope="module")
def kiln_runs(tmp_path_factory):
    return _cached(tmp_path_factory, _kiln_ranks)


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    return _cached(tmp_path_factory, _torch_ranks)


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert want and set(got) == set(want), f"{what}: {sorted(got)} != {sorted(want)}"
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{what} {key}")


@pytest.mark.parametrize("n", [2, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("schedule", W.SCHEDULES)
def test_training_matches_torch_pipelining(kiln_runs, torch_runs, n, schedule):
    """(4 torch processes take about 40 s on two busy cores: marked slow.)"""
    kiln_ranks, torch_ranks = kiln_runs(n), torch_runs(n)
    for r in range(n):
        want = launch.prefixed(torch_ranks[r], schedule)
        _assert_same(launch.prefixed(kiln_ranks[r], schedule), want, f"{schedule} rank {r}/{n}")
        assert ("losses0" in want) == (r == n - 1)


def test_tuple_activations_match_torch_pipelining(kiln_runs, torch_runs):
    """Stage 0 sends two tensors (one header, two messages); stage 1 takes both as arguments
    and sends both gradients back."""
    kiln_ranks, torch_ranks = kiln_runs(2), torch_runs(2)
    for r in range(2):
        _assert_same(launch.prefixed(kiln_ranks[r], W.TUPLE),
                     launch.prefixed(torch_ranks[r], W.TUPLE), f"tuple rank {r}")


def test_tutorial_transformer_split_by_pipeline_matches_torch(kiln_runs, torch_runs):
    """torch's pipelining tutorial (small, float64): a Transformer of TransformerDecoderLayers in
    a ModuleDict, cut at layers.2 by pipeline() (kiln.fx on kiln's side, torch.export on
    torch's), three SGD steps with ScheduleGPipe and a token-wise cross entropy; the stage
    modules keep the model's parameter names in both."""
    kiln_ranks, torch_ranks = kiln_runs(2), torch_runs(2, "tutorial")
    for r in range(2):
        _assert_same(launch.prefixed(kiln_ranks[r], "tutorial"),
                     launch.prefixed(torch_ranks[r], "tutorial"), f"tutorial rank {r}")


def test_stages_over_process_groups_match_torch(kiln_runs, torch_runs):
    """4 ranks as two 2-stage pipelines ({0, 1} and {2, 3}): each equals torch's 2-stage run."""
    kiln_ranks, torch_two = kiln_runs(4), torch_runs(2)
    for r in range(4):
        _assert_same(launch.prefixed(kiln_ranks[r], "group_Schedule1F1B"),
                     launch.prefixed(torch_two[r % 2], "Schedule1F1B"), f"group rank {r}")


def _whole_model_names(stage_out: dict, stage: int, n: int) -> dict:
    """A stage's saved keys with its parameter names ("0.0.weight") turned into the whole
    model's ("2.0.weight" for stage 1 of 2)."""
    chunk = (len(W.SIZES) - 1) // n
    renamed = {}
    for key, value in stage_out.items():
        kind, _, name = key.partition("/")
        if name:
            block, rest = name.split(".", 1)
            key = f"{kind}/{stage * chunk + int(block)}.{rest}"
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("schedule", W.SCHEDULES)
def test_uneven_microbatches_match_torch_whole_model(kiln_runs, n, schedule):
    """10 rows in 4 microbatches (3, 3, 2, 2): the shapes travel in kiln's headers."""
    kiln_ranks = kiln_runs(n)
    want = W.reference(torch, W.UNEVEN_BATCH)
    got = {}
    for r in range(n):
        got.update(_whole_model_names(launch.prefixed(kiln_ranks[r], f"uneven_{schedule}"), r, n))
    _assert_same(got, want, f"uneven {schedule} on {n} stages")


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("schedule", W.SCHEDULES)
def test_pipeline_split_spec_matches_torch_whole_model(kiln_runs, n, schedule):
    """pipeline(model, split_spec={"layers.k": SplitPoint.BEGINNING}) on a ModuleDict model
    with a skip connection from the input to the output (carried through the middle stages);
    the stage GraphModules keep the whole model's parameter names."""
    kiln_ranks = kiln_runs(n)
    want = W.reference(torch, W.BATCH, W.traced_model(torch))
    got = {}
    for r in range(n):
        got.update(launch.prefixed(kiln_ranks[r], f"traced_{schedule}"))
    _assert_same(got, want, f"pipeline() {schedule} on {n} stages")


@pytest.mark.parametrize("n", [2, 4])
def test_bad_calls_say_what_is_wrong(kiln_runs, n):
    kiln_ranks = kiln_runs(n)
    expected = {
        "index_out_of_range": f"ValueError: PipelineStage: stage_index {n} is out of range of "
                              f"{n} stages",
        "too_few_stages": f"RuntimeError: PipelineStage: pipeline group size {n} cannot be "
                          f"larger than the number of stages {n - 1}",
        "too_many_stages": f"NotImplementedError: PipelineStage: {n + 1} stages on {n} ranks "
                           "needs several stages per rank",
        "wrong_rank": "ValueError: PipelineStage: rank {r} of the pipeline group must hold "
                      "stage {r}",
        "few_microbatches": f"ValueError: Schedule1F1B: the number of microbatches ({n - 1}) "
                            f"must be at least the number of stages ({n})",
        "split_spec": "ValueError: pipeline(): split_spec names 'nope', which is not a "
                      "submodule of Sequential",
    }
    for r, got in enumerate(kiln_ranks):
        errors = launch.prefixed(got, "error")
        for name, message in expected.items():
            assert str(errors[name]).startswith(message.format(r=r)), (name, errors[name])
    assert "needs the batch" in str(launch.prefixed(kiln_ranks[0], "error")["no_batch"])
    last = launch.prefixed(kiln_ranks[-1], "error")
    assert "pass target=" in str(last["no_target"])
    assert "has no loss_fn" in str(last["no_loss_fn"])


@pytest.fixture
def one_rank(monkeypatch):
    """A world of one rank in this process (no mpiexec), taken down afterwards."""
    launch.mpi_or_skip()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    kiln.distributed.init_process_group()
    yield
    kiln.distributed.destroy_process_group()


@pytest.mark.parametrize("schedule", W.SCHEDULES)
def test_single_stage_with_summed_loss_and_no_scaling(one_rank, schedule):
    """One stage holding the whole model (first and last at once), a sum-reduced loss and
    scale_grads=False: the gradients are the plain sum over microbatches, as torch's whole
    model gives them; return_outputs=False returns None."""
    x, y = W.data(kiln, 0)
    model = W.stage_module(kiln, 0, 1)
    stage = pipelining.PipelineStage(model, 0, 1, "cpu")
    sched = getattr(pipelining, schedule)(
        stage, W.N_MICRO, loss_fn=lambda o, t: kiln.nn.functional.mse_loss(o, t, reduction="sum"),
        scale_grads=False)
    losses = []
    out = sched.step(x, target=y, losses=losses)
    want_model = W.stage_module(torch, 0, 1)
    tx, ty = torch.tensor(x.numpy()), torch.tensor(y.numpy())
    want_out = want_model(tx)
    want_losses = [torch.nn.functional.mse_loss(o, t, reduction="sum")
                   for o, t in zip(want_model(tx).tensor_split(W.N_MICRO),
                                   ty.tensor_split(W.N_MICRO))]
    sum(want_losses).backward()
    np.testing.assert_allclose(out.detach().numpy(), want_out.detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose([float(v.detach()) for v in losses],
                               [float(v.detach()) for v in want_losses], rtol=RTOL)
    for (name, p), (_, q) in zip(model.named_parameters(), want_model.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=name)
    assert sched.step(x, target=y, return_outputs=False) is None
    with pytest.raises(ValueError, match="no loss_fn to compute them"):
        getattr(pipelining, schedule)(stage, W.N_MICRO).step(x, losses=[])
    with pytest.raises(TypeError, match="losses must be a list"):
        sched.step(x, target=y, losses=())


def test_microbatch_split_follows_torch_tensor_split():
    x = np.arange(30.0).reshape(10, 3)
    args, kwargs = pipelining.split_args_kwargs_into_chunks(
        (kiln.tensor(x), 7), {"mask": kiln.tensor(x.T)}, 4,
        kwargs_chunk_spec=pipelining.TensorChunkSpec.from_dict({"mask": 1}))
    want = torch.tensor_split(torch.tensor(x), 4)
    want_mask = torch.tensor_split(torch.tensor(x.T), 4, 1)
    assert len(args) == len(kwargs) == 4
    for (a, seven), kw, w, wm in zip(args, kwargs, want, want_mask):
        np.testing.assert_array_equal(a.numpy(), w.numpy())
        np.testing.assert_array_equal(kw["mask"].numpy(), wm.numpy())
        assert seven == 7
    merged = pipelining.merge_chunks([a for a, _ in args])
    np.testing.assert_array_equal(merged.numpy(), torch.cat(want).numpy())


def test_microbatch_split_needs_enough_rows():
    with pytest.raises(ValueError, match=r"shape \[3, 2\] into 4 microbatches"):
        pipelining.split_args_kwargs_into_chunks((kiln.zeros(3, 2),), None, 4)


def test_pipeline_stages_chained_equal_the_whole_model():
    """pipeline()'s stage modules run one after the other in one process: torch's whole model's
    output and gradients, for each cut of traced_model into 2 and 4 stages."""
    x = W.data(kiln, 0)[0]
    want_model = W.traced_model(torch)
    want = want_model(torch.tensor(x.numpy()))
    want.sum().backward()
    for n in (2, 4):
        pipe = W.traced_pipe(kiln, pipelining, n)
        stages = [pipe.get_stage_module(s) for s in range(n)]
        h = stages[0](x)
        for stage in stages[1:]:
            h = stage(*h) if isinstance(h, tuple) else stage(h)
        np.testing.assert_allclose(h.detach().numpy(), want.detach().numpy(), rtol=RTOL,
                                   atol=ATOL)
        h.sum().backward()
        grads = {k: p.grad.numpy() for s in stages for k, p in s.named_parameters()}
        assert set(grads) == {k for k, _ in want_model.named_parameters()}
        for k, p in want_model.named_parameters():
            np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=k)


def test_pipeline_refuses_what_it_cannot_split():
    assert {p.name for p in pipelining.SplitPoint} == {
        p.name for p in torch.distributed.pipelining.SplitPoint}
    model = W.traced_model(kiln)
    x = kiln.zeros(2, W.SIZES[0], dtype=kiln.float64)
    with pytest.raises(ValueError, match="'layers.9', which is not a submodule"):
        pipelining.pipeline(model, (x,), split_spec={"layers.9": pipelining.SplitPoint.END})
    with pytest.raises(TypeError, match="must be a SplitPoint"):
        pipelining.pipeline(model, (x,), split_spec={"layers.1": "beginning"})
    with pytest.raises(NotImplementedError, match="split_spec"):
        pipelining.pipe_split()

    class Tied(kiln.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = kiln.nn.Linear(3, 3), kiln.nn.Linear(3, 3)

        def forward(self, x):
            return self.b(self.a(x)) * self.a.weight.sum()

    with pytest.raises(NotImplementedError, match="share a parameter between stages"):
        pipelining.pipeline(Tied(), (kiln.zeros(1, 3),),
                            split_spec={"b": pipelining.SplitPoint.BEGINNING})
