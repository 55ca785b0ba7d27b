"""Compiled never slower than eager: a C executor times each generated kernel against the array
executor on its first replays and runs each group the faster way. A kernel made slow on purpose
switches to NumPy with the same results, `explain` says which way each group runs, and
KILN_KERNEL_CHOICE=c keeps the generated code."""

from __future__ import annotations

import time

import numpy as np
import pytest

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
from kiln import compiler
from kiln.runtime import c_build
from kiln.runtime import schedule_executor as se

needs_cc = pytest.mark.skipif(c_build.compiler_problem() is not None,
                              reason="needs a working C compiler with OpenMP")

DELAY = 0.03        # seconds added to a kernel made slow on purpose: far above any real one


def _slowed(runner):
    def slow(*pointers):
        time.sleep(DELAY)
        runner(*pointers)
    return slow


def _executor(compiled) -> se.ScheduleExecutor:
    """The executor of the entry traced last."""
    entry = list(compiled.entries.values())[-1]
    assert isinstance(entry.executor, se.ScheduleExecutor)
    return entry.executor.wait()


def _slow_all_c_steps(executor) -> int:
    """Make every C step of a linked executor slow; how many there are."""
    steps, count = [], 0
    for kind, runner, ins, outs, sub, extra in executor.steps:
        if kind == "c":
            runner, count = _slowed(runner), count + 1
        steps.append((kind, runner, ins, outs, sub, extra))
    executor.steps = steps
    return count


def test_choose_kernel_needs_numpy_clearly_faster():
    assert se.choose_kernel([1.0, 0.5, 2.0], [0.4, 0.9]) == "numpy"      # 0.4 < 0.9 * 0.5
    assert se.choose_kernel([1.0, 0.5], [0.46, 0.6]) == "c"              # within the margin
    assert se.choose_kernel([0.1], [0.2]) == "c"
    assert se.choose_kernel([1.0], [0.8], margin=0.7) == "c"


@needs_cc
def test_slow_kernel_switches_to_numpy_with_same_values(capsys):
    rng = np.random.default_rng(0)
    x = kiln.from_numpy(rng.standard_normal((32, 48), dtype=np.float32))

    def f(x):
        return (x.tanh() * 2 + 1).softmax(-1) * x.exp()

    cf = kiln.compile(f, backend="c")
    cf(x)                                            # traces
    executor = _executor(cf)
    assert _slow_all_c_steps(executor) >= 1
    for _ in range(se.TRIAL_RUNS):                   # the trial replays use the C results
        np.testing.assert_allclose(cf(x).numpy(), f(x).numpy(), rtol=1e-5, atol=1e-6)
    assert executor.choices and all(c.runs == "numpy" for c in executor.choices)
    assert all(c.c_ms >= DELAY * 1e3 > c.numpy_ms for c in executor.choices)
    assert not any(st[0] == "c" for st in executor.steps)
    assert sum(st[0] == "numpy" for st in executor.steps) == len(executor.choices)
    for _ in range(2):                               # now on the array executor
        np.testing.assert_allclose(cf(x).numpy(), f(x).numpy(), rtol=1e-5, atol=1e-6)
    out = compiler.explain(cf, x)
    assert len(out.kernel_choices) == len(executor.choices)
    assert "runs as NumPy (array executor)" in capsys.readouterr().out


@needs_cc
def test_a_new_thread_count_measures_again(monkeypatch):
    x = kiln.from_numpy(np.linspace(0, 1, 200, dtype=np.float32))

    def f(x):
        return (x.sin() + 2).sqrt()

    cf = kiln.compile(f, backend="c")
    cf(x)
    executor = _executor(cf)
    _slow_all_c_steps(executor)
    for _ in range(se.TRIAL_RUNS):
        cf(x)
    assert [c.runs for c in executor.choices] == ["numpy"]
    # as kiln.set_num_threads(7) would: the trials start again from the (slowed) C kernel
    monkeypatch.setattr(c_build, "_threads", 7)
    cf(x)
    assert executor.choices == [] and [st[0] for st in executor.steps].count("c") == 1
    for _ in range(se.TRIAL_RUNS - 1):
        got = cf(x)
    assert [c.runs for c in executor.choices] == ["numpy"]
    np.testing.assert_allclose(got.numpy(), np.sqrt(np.sin(np.linspace(0, 1, 200)) + 2),
                               rtol=1e-6)


@needs_cc
def test_slow_numpy_keeps_generated_kernels(monkeypatch):
    class SlowArrayExecutor(se.ArrayExecutor):
        def run(self, inputs):
            time.sleep(DELAY)
            return super().run(inputs)
    monkeypatch.setattr(se, "ArrayExecutor", SlowArrayExecutor)
    x = kiln.from_numpy(np.linspace(-2, 2, 600, dtype=np.float32).reshape(20, 30))

    def f(x):
        return (x * x + 1).log().sum(-1)

    cf = kiln.compile(f, backend="c")
    for _ in range(se.TRIAL_RUNS + 2):
        got = cf(x)
    executor = _executor(cf)
    assert executor.choices and all(c.runs == "c" for c in executor.choices)
    assert sum(st[0] == "c" for st in executor.steps) == len(executor.choices)
    np.testing.assert_allclose(got.numpy(), f(x).numpy(), rtol=1e-5, atol=1e-6)
    assert "runs as generated C" in "\n".join(compiler.kernel_choices(cf))


@needs_cc
def test_kernel_choice_c_skips_trials(monkeypatch):
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    x = kiln.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    cf = kiln.compile(lambda x: (x + 1).sqrt() * 3, backend="c")
    cf(x)
    executor = _executor(cf)
    _slow_all_c_steps(executor)
    for _ in range(se.TRIAL_RUNS + 1):
        np.testing.assert_allclose(cf(x).numpy(), np.sqrt(np.arange(12) + 1).reshape(3, 4) * 3,
                                   rtol=1e-6)
    assert executor.choices == [] and any(st[0] == "c" for st in executor.steps)


@needs_cc
def test_training_step_after_switching_matches_eager():
    """An MLP with Adam, stepped eagerly and compiled; every C kernel of the compiled step
    (forward, backward and the optimizer's in-place updates) slowed, so all switch to NumPy
    after the trials, and the parameters still follow eager."""
    rng = np.random.default_rng(1)
    x = kiln.from_numpy(rng.standard_normal((16, 12), dtype=np.float32))
    y = kiln.from_numpy(rng.integers(0, 5, 16))

    def make():
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 5))
        opt = kiln.optim.Adam(model.parameters(), lr=1e-2)

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return model, step

    eager_model, eager_step = make()
    comp_model, comp_step = make()
    cf = kiln.compile(comp_step, backend="c")
    losses = [(float(eager_step(x, y)), float(cf(x, y)))]       # the trace: no replay yet
    executor = _executor(cf)
    assert _slow_all_c_steps(executor) >= 2
    for _ in range(se.TRIAL_RUNS + 4):
        losses.append((float(eager_step(x, y)), float(cf(x, y))))
    assert executor.choices and all(c.runs == "numpy" for c in executor.choices)
    np.testing.assert_allclose([c for _, c in losses], [e for e, _ in losses], rtol=1e-5)
    for pe, pc in zip(eager_model.parameters(), comp_model.parameters()):
        np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_switched_groups_never_return_views_of_their_inputs():
    """A group moved to NumPy hands back fresh memory where NumPy would return a view of an
    input (a later C kernel may write over that input in place); its other views stay views."""
    from kiln.compiler import trace
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = trace(lambda x: (x.reshape(6), (x * 2).permute(1, 0)), kiln.from_numpy(a)).graphs[0]
    plain = se.ArrayExecutor(graph)
    assert np.shares_memory(plain.run([a])[0][0], a)        # what NumPy alone gives
    (flat, doubled), _ = se._Unaliased(plain).run([a])
    assert not np.shares_memory(flat, a) and not np.shares_memory(doubled, a)
    np.testing.assert_array_equal(flat, a.reshape(6))
    np.testing.assert_array_equal(doubled, (a * 2).T)
    assert not doubled.flags.c_contiguous                     # still NumPy's permuted view


@needs_cc
def test_numpy_runs_on_half_of_the_trial_replays(monkeypatch):
    """The trials run NumPy on the even replays (before the C kernel, whose results are used)
    and the C kernel alone on the odd ones: the array executor runs on half of the trial
    replays, the C kernel is timed on all of them, and every replay returns the C kernel's
    (eager's) values."""
    runs = []

    class CountingArrayExecutor(se.ArrayExecutor):
        def run(self, inputs):
            runs.append(len(runs))
            return super().run(inputs)
    monkeypatch.setattr(se, "ArrayExecutor", CountingArrayExecutor)
    samples = []                                     # (C times, NumPy times) per kernel
    choose = se.choose_kernel

    def counting_choose(c_times, numpy_times):
        samples.append((len(c_times), len(numpy_times)))
        return choose(c_times, numpy_times)
    monkeypatch.setattr(se, "choose_kernel", counting_choose)
    x = kiln.from_numpy(np.linspace(-2, 2, 600, dtype=np.float32).reshape(20, 30))

    def f(x):
        return (x * x + 1).log().sum(-1)

    cf = kiln.compile(f, backend="c")
    cf(x)                                            # traces
    executor = _executor(cf)
    kernels = sum(st[0] == "c" for st in executor.steps)
    assert not any(st[0] == "array" for st in executor.steps)   # only the trials count
    for _ in range(se.TRIAL_RUNS):
        np.testing.assert_allclose(cf(x).numpy(), f(x).numpy(), rtol=1e-5, atol=1e-6)
    assert len(executor.choices) == kernels >= 1
    assert len(runs) == kernels * ((se.TRIAL_RUNS + 1) // 2)
    assert samples == [(se.TRIAL_RUNS, (se.TRIAL_RUNS + 1) // 2)] * kernels
