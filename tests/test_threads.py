"""Threads: kiln.set_num_threads limits BLAS threads as torch's does; grad mode and the active
trace are per thread, so one thread's no_grad or trace never reaches another's ops."""

import sys
import threading

import numpy as np
import pytest

import kiln
import kiln.nn as nn
from kiln.compiler import trace


def test_set_num_threads_limits_blas_and_rejects_zero():
    pytest.importorskip("threadpoolctl")
    before = kiln.get_num_threads()
    try:
        kiln.set_num_threads(1)
        assert kiln.get_num_threads() == 1
        with pytest.raises(ValueError, match="must be positive"):
            kiln.set_num_threads(0)
    finally:
        kiln.set_num_threads(before)
    assert kiln.get_num_threads() == before


# ----------------------------------------------------------------------------- per-thread modes


def _run_in_thread(fn):
    """Run fn in a new thread; re-raise what it raised."""
    errors = []

    def body():
        try:
            fn()
        except BaseException as e:       # noqa: BLE001 - handed back to the test thread
            errors.append(e)
    t = threading.Thread(target=body)
    t.start()
    return t, errors


def _train(steps: int, evaluate: bool):
    """An MLP trained with Adam; with `evaluate`, another thread evaluates it under no_grad the
    whole time. Returns the final parameters and how many evaluations ran."""
    kiln.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = kiln.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((steps, 4, 8)).astype(np.float32)
    ys = rng.standard_normal((steps, 4, 1)).astype(np.float32)
    x_eval = kiln.tensor(rng.standard_normal((32, 8)).astype(np.float32))
    stop, started, evaluations = threading.Event(), threading.Event(), [0]

    def evaluator():
        while not stop.is_set():
            with kiln.no_grad():
                out = model(x_eval)
                assert not kiln.is_grad_enabled()
            assert not out.requires_grad and out.grad_fn is None
            evaluations[0] += 1
            started.set()

    def trainer():
        for i in range(steps):
            loss = ((model(kiln.tensor(xs[i])) - kiln.tensor(ys[i])) ** 2).mean()
            assert loss.requires_grad, f"step {i}: the loss lost its graph"
            opt.zero_grad()
            loss.backward()
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            assert not missing, f"step {i}: no gradient for {missing}"
            opt.step()

    threads = []
    if evaluate:
        threads.append(_run_in_thread(evaluator))
        assert started.wait(10)
    threads.append(_run_in_thread(trainer))
    threads[-1][0].join()
    stop.set()
    for t, errors in threads:
        t.join()
        if errors:
            raise errors[0]
    return [p.detach().numpy().copy() for p in model.parameters()], evaluations[0]


def test_training_thread_unaffected_by_a_no_grad_evaluation_thread():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)          # switch threads often, so the two interleave per op
    try:
        alone, _ = _train(400, evaluate=False)
        shared, evaluations = _train(400, evaluate=True)
    finally:
        sys.setswitchinterval(previous)
    assert evaluations > 1
    for a, b in zip(alone, shared):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_grad_mode_is_per_thread():
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def no_grad_thread():
        with kiln.no_grad():
            seen["inside"] = kiln.is_grad_enabled()
            entered.set()
            assert release.wait(10)
        seen["after"] = kiln.is_grad_enabled()

    t, errors = _run_in_thread(no_grad_thread)
    assert entered.wait(10)
    try:
        assert kiln.is_grad_enabled()          # the other thread's no_grad is not ours
        x = kiln.ones(3, requires_grad=True)
        y = (x * 2).sum()
        assert y.requires_grad
        y.backward()
        np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])
    finally:
        release.set()
        t.join()
    assert not errors, errors
    assert seen == {"inside": False, "after": True}

    # a new thread starts with grad mode on, whatever the thread that started it has
    with kiln.no_grad():
        t, errors = _run_in_thread(lambda: seen.__setitem__("fresh", kiln.is_grad_enabled()))
        t.join()
    assert seen["fresh"] is True and not errors


def test_trace_records_only_its_own_thread():
    """While one thread traces a function, another thread's eager ops stay out of the graph."""
    midway, resume = threading.Event(), threading.Event()
    outside = {}

    def traced(x):
        y = x * 2
        midway.set()
        assert resume.wait(10)
        return y + 1

    def eager_thread():
        assert midway.wait(10)
        a = kiln.ones(3)
        outside["value"] = (a.exp() - 1).numpy()
        resume.set()

    t, errors = _run_in_thread(eager_thread)
    result = trace(traced, kiln.ones(3))
    t.join()
    assert not errors, errors
    ops = [node.op for g in result.graphs for node in g.nodes]
    assert "exp" not in ops and "sub" not in ops, ops
    assert ops.count("mul") == 1 and ops.count("add") == 1, ops
    np.testing.assert_allclose(outside["value"], np.full(3, np.e - 1), rtol=1e-6)
    np.testing.assert_array_equal(result.result.numpy(), [3.0, 3.0, 3.0])
