"""CUDA graph replay of compiled programs (kiln.runtime.cuda_graph): a training step is captured
after a warm-up call and replayed with one graph launch, giving eager's results step after step
with new inputs each call; a program that reads the host is not captured and says why; the
environment switch turns graphs off. GPU-marked: skipped without a GPU, and run on the CPU under
the strict fake CUDA by tests/test_fake_cuda.py, whose capture records work without doing it
(an array written during capture is put back, one made during it is filled with NaN), so a
result that did not come from replaying the graph shows."""

import numpy as np
import pytest

import kiln
import kiln.nn as nn
import kiln.nn.functional as F

STEPS = 6


def _mlp_step(loss_fn):
    kiln.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)).cuda()
    opt = kiln.optim.Adam(model.parameters(), lr=1e-2)

    def step(x, y):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    step.optimizer = opt
    return step, model


def _batches(seed: int, targets: str):
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        x = kiln.tensor(rng.standard_normal((8, 20), dtype=np.float32)).cuda()
        if targets == "classes":
            y = kiln.tensor(rng.integers(0, 5, 8)).cuda()
        else:
            y = kiln.tensor(rng.standard_normal((8, 5), dtype=np.float32)).cuda()
        yield x, y


def _runners(compiled) -> list:
    return [e.executor.cuda_graph for e in compiled.entries.values()
            if e.program is not None]


def _train_both(loss_fn, targets: str):
    """Eager and compiled training side by side on the same batches: losses, parameters."""
    eager, eager_model = _mlp_step(loss_fn)
    step, model = _mlp_step(loss_fn)
    compiled = kiln.compile(step)
    losses, kept = [], []
    for x, y in _batches(1, targets):
        want = eager(x, y).item()
        got = compiled(x, y)
        kept.append(got)                    # held across replays: must keep its own value
        losses.append((want, got.item()))
        for p, q in zip(eager_model.parameters(), model.parameters()):
            np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().cpu().numpy(),
                                       rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([k.item() for k in kept], [w for w, _ in losses], rtol=1e-5)
    return compiled, model


@pytest.mark.gpu
@pytest.mark.parametrize("loss_fn, targets", [(F.cross_entropy, "classes"),
                                              (F.mse_loss, "values")],
                         ids=["cross_entropy", "mse"])
def test_training_step_replays_as_a_cuda_graph_and_matches_eager(loss_fn, targets):
    compiled, _ = _train_both(loss_fn, targets)
    (runner,) = _runners(compiled)[-1:]
    assert runner.graph is not None and runner.replays >= 2, runner.describe()
    assert runner.describe().startswith("cuda graph: captured (") and runner.kernels > 5
    # the batch is copied into the graph's buffers; parameters and optimizer state are read
    # where they are
    assert runner._stable[:2] == [False, False] and all(runner._stable[2:6])
    # the new parameters and optimizer state are written inside the graph itself
    assert all(runner._in_graph)
    lines = kiln.compiler.cuda_graph_notes(compiled)
    assert any(line.startswith("forward cuda graph: captured (") for line in lines)
    if targets == "values":             # explain prints it (and runs one more traced step)
        x, y = next(_batches(5, targets))
        report = str(kiln.compiler.explain(compiled, x, y))
        assert "CUDA graphs of the compiled programs on a GPU:" in report
        assert "forward cuda graph: captured (" in report


@pytest.mark.gpu
def test_an_out_of_range_target_raises_after_the_replay_and_writes_nothing():
    step, model = _mlp_step(F.cross_entropy)
    compiled = kiln.compile(step)
    batches = list(_batches(2, "classes"))
    for x, y in batches:
        compiled(x, y)
    assert _runners(compiled)[-1].graph is not None
    before = [p.detach().cpu().numpy().copy() for p in model.parameters()]
    x, _ = batches[0]
    bad = kiln.tensor(np.array([0, 1, 2, 3, 4, 5, 1, 0])).cuda()        # 5 is out of range
    with pytest.raises(IndexError, match="out of bounds"):
        compiled(x, bad)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.detach().cpu().numpy(), b)


@pytest.mark.gpu
def test_random_numbers_are_inputs_so_a_dropout_program_is_captured():
    """Dropout's numbers are drawn on the host in PyTorch's order and copied in as inputs, so
    the program has no host read: it is captured and each replay gets fresh draws, equal to
    eager's for the same seed."""
    w = kiln.tensor(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)).cuda()

    def noisy(x):
        return F.dropout(x @ w, 0.5, training=True).sum(dim=1)
    compiled = kiln.compile(noisy)
    rng = np.random.default_rng(3)
    outs = []
    for call in range(4):
        x = kiln.tensor(rng.standard_normal((5, 4), dtype=np.float32)).cuda()
        kiln.manual_seed(call)
        want = noisy(x).cpu().numpy()
        kiln.manual_seed(call)
        outs.append(compiled(x).cpu().numpy())
        np.testing.assert_allclose(outs[-1], want, rtol=1e-5, atol=1e-6)
    (runner,) = _runners(compiled)
    assert runner.graph is not None, runner.reason


@pytest.mark.gpu
def test_a_program_that_reads_the_host_runs_plainly_and_says_why():
    """matrix_exp reads a norm on the host to pick its squarings: no capture."""
    w = kiln.tensor(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)).cuda()

    def noisy(x):
        return kiln.linalg.matrix_exp((x @ w)[:3] * 0.5).sum(dim=1)
    compiled = kiln.compile(noisy)
    rng = np.random.default_rng(3)
    for call in range(4):
        x = kiln.tensor(rng.standard_normal((5, 4), dtype=np.float32)).cuda()
        kiln.manual_seed(call)
        want = noisy(x).cpu().numpy()
        kiln.manual_seed(call)
        np.testing.assert_allclose(compiled(x).cpu().numpy(), want, rtol=1e-5, atol=1e-6)
    (runner,) = _runners(compiled)
    assert runner.graph is None and runner.reason.startswith("capturing failed:")
    assert runner.describe() == f"cuda graph: not captured: {runner.reason}"
    notes = kiln.compiler.cuda_graph_notes(compiled)
    assert notes == [f"forward {runner.describe()}"]


@pytest.mark.gpu
def test_graphs_turn_off_with_the_environment(monkeypatch):
    monkeypatch.setenv("KILN_CUDA_GRAPHS", "0")
    compiled, _ = _train_both(F.mse_loss, "values")
    (runner,) = _runners(compiled)[-1:]
    assert runner.graph is None and runner.describe() == \
        "cuda graph: not captured: turned off (KILN_CUDA_GRAPHS=0)"


@pytest.mark.gpu
def test_a_moved_parameter_and_a_new_learning_rate_reach_the_graph():
    eager, eager_model = _mlp_step(F.mse_loss)
    step, model = _mlp_step(F.mse_loss)
    compiled = kiln.compile(step)
    batches = list(_batches(4, "values"))
    for i, (x, y) in enumerate(batches):
        if i == 4:      # after the capture: a new learning rate, a weight in new memory
            for o in (eager.optimizer, step.optimizer):
                o.param_groups[0]["lr"] = 3e-3
            for m in (eager_model, model):
                m[0].weight.data = m[0].weight.data.clone()
        np.testing.assert_allclose(compiled(x, y).item(), eager(x, y).item(), rtol=1e-5)
    for p, q in zip(eager_model.parameters(), model.parameters()):
        np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
    runner = _runners(compiled)[-1]
    assert runner.graph is not None and runner.captures == 2, runner.describe()
