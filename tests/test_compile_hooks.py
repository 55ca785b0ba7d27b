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
