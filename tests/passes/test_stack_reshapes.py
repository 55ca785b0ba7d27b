"""concatenate_before_reshapes: a stack of steps (a cat of unit reshapes, as an RNN's outputs
over time are traced) becomes one reshape of the steps' concatenation; same results, and the
compiled step runs fewer view steps."""

import numpy as np

import kiln
from kiln.passes.stack_reshapes import concatenate_before_reshapes
from tests.passes.helpers import assert_same_results, nodes_of, traced_optimized


def _recurrence(x, w):
    h, hs = x[0], []
    for t in range(x.shape[0]):
        h = (h @ w + x[t]).tanh()
        hs.append(h)
    return hs


def test_a_stack_of_steps_is_a_reshape_of_their_concatenation():
    x, w = kiln.randn(6, 3, 4), kiln.randn(4, 4)

    def step(x, w):
        return (kiln.stack(_recurrence(x, w), 0) * 2.0).sum(1)
    graph, inputs = traced_optimized(step, x, w)
    (cat,) = nodes_of(graph, "cat")
    producers = graph.producers()
    assert [producers[v].op for v in cat.inputs] == ["reshape"] * 6
    after = concatenate_before_reshapes(graph)
    after.verify()
    (cat,) = nodes_of(after, "cat")
    assert [v.shape for v in cat.inputs] == [(3, 4)] * 6 and cat.out.shape == (18, 4)
    producers = after.producers()
    assert all(producers[v].op != "reshape" for v in cat.inputs)
    (reshape,) = after.users()[cat.out]
    assert reshape.op == "reshape" and reshape.out.shape == (6, 3, 4)
    assert_same_results(graph, after, inputs, rtol=1e-6)
    np.testing.assert_allclose(kiln.compile(step)(x, w).numpy(), step(x, w).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_pieces_of_any_reshape_alike_past_their_first_axis_are_concatenated():
    x = kiln.randn(4, 6)

    def step(x):            # pieces of 2 and 1 rows reshaped to (4, 3) and (2, 3)
        a, b = x[:2].exp(), x[2:3].sin()
        return kiln.cat([a.reshape(4, 3), b.reshape(2, 3)], 0) + 1.0
    graph, inputs = traced_optimized(step, x)
    after = concatenate_before_reshapes(graph)
    after.verify()
    (cat,) = nodes_of(after, "cat")
    assert [v.shape for v in cat.inputs] == [(2, 6), (1, 6)]
    assert_same_results(graph, after, inputs, rtol=1e-6)


def test_inner_axes_or_unlike_pieces_stay():
    x, w = kiln.randn(5, 3, 4), kiln.randn(4, 4)

    def inner(x, w):        # stacked along axis 1: not one block per step
        return kiln.stack(_recurrence(x, w), 1) * 2.0
    graph, _ = traced_optimized(inner, x, w)
    assert concatenate_before_reshapes(graph) is graph
    y, z = kiln.randn(4, 4), kiln.randn(8)

    def unlike(y, z):       # (2, 4) and (8,) pieces cannot be concatenated themselves
        return kiln.cat([y[:2].exp().reshape(1, 8), z.sin().reshape(1, 8),
                         y[2:].cos().reshape(1, 8)], 0) + 1.0
    graph, _ = traced_optimized(unlike, y, z)
    assert concatenate_before_reshapes(graph) is graph

