"""kiln.compiler's hooks for library code (compiler/hooks.py): what they report and do, eager
and inside a compiled function."""

import numpy as np

import kiln


def test_is_compiling_is_true_only_while_tracing():
    def body(x):
        inside = kiln.compiler.is_compiling()
        with kiln.compiler.untraced():
            hidden = kiln.compiler.is_compiling()
        return x * (2.0 if inside else 3.0) + (10.0 if hidden else 0.0)

    f = kiln.compile(body)
    x = kiln.ones(3)
    assert not kiln.compiler.is_compiling()
    np.testing.assert_array_equal(body(x).numpy(), [3.0, 3.0, 3.0])         # eager
    np.testing.assert_array_equal(f(x).numpy(), [2.0, 2.0, 2.0])            # traced
    np.testing.assert_array_equal(f(x).numpy(), [2.0, 2.0, 2.0])            # replayed


def test_untraced_state_is_made_once_and_read_by_identity():
    state = {}

    @kiln.compile
    def f(x):
        if "t" not in state:
            with kiln.compiler.untraced():
                state["t"] = kiln.zeros(3)
        state["t"].add_(x)
        return state["t"] * 1

    x = kiln.tensor([1.0, 2.0, 3.0])
    for k in (1, 2, 3):
        np.testing.assert_allclose(f(x).numpy(), [k * 1.0, k * 2.0, k * 3.0])
    np.testing.assert_allclose(state["t"].numpy(), [3.0, 6.0, 9.0])


def test_scalar_input_is_read_on_every_call():
    group = {"lr": 0.5}
    assert kiln.compiler.scalar_input(group, "lr", kiln.device("cpu")) == 0.5   # eager: itself

    @kiln.compile
    def f(x):
        return x * kiln.compiler.scalar_input(group, "lr", x.device)

    x = kiln.tensor([2.0, 4.0])
    np.testing.assert_allclose(f(x).numpy(), [1.0, 2.0])
    group["lr"] = 0.25                     # a scheduler's change: read by the replay
    np.testing.assert_allclose(f(x).numpy(), [0.5, 1.0])


def test_numpy_scheduled_lr_and_weight_decay_are_read_on_every_call():
    """DINO sets AdamW's lr and weight decay each step from NumPy schedules (`lr[it]`, a NumPy
    float64): both are read on every call as Python floats are, so one trace serves every step
    (each new value traced again, to the recompile limit, before), with torch's updates."""
    import torch
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((2, 3)).astype(np.float32)
    xs = rng.standard_normal((10, 4, 3)).astype(np.float32)
    lrs, wds = np.linspace(0.1, 0.01, 10), np.linspace(0.04, 0.4, 10)

    def train(lib, compile):
        w = lib.nn.Parameter(lib.tensor(w0))
        opt = lib.optim.AdamW([w])

        def step(x):
            loss = (x @ w.T).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        step = kiln.compile(step) if compile else step
        for i, x in enumerate(xs):
            opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"] = lrs[i], wds[i]
            step(lib.tensor(x))
        return w.detach().numpy(), step

    got, step = train(kiln, True)
    assert len(step.entries) == 1 and all(e.program is not None for e in step.entries.values())
    np.testing.assert_allclose(got, train(torch, False)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, train(kiln, False)[0])
