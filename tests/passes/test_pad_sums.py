"""concatenate_padded_sums: the gradient of a tensor split into steps (a sum of zero-padded
pieces, nested for kiln.nn.rnn's balanced split) becomes one concatenation; same results."""

import numpy as np

import kiln
from kiln.passes.cleanup import optimize
from kiln.passes.pad_sums import concatenate_padded_sums
from tests.passes.helpers import CASES, assert_same_results, traced


def _traced(fn, *args):
    (program,) = kiln.compiler.trace(fn, *args, _snapshot=True).programs
    optimized, _ = optimize(program.graph)
    return optimized, [np.array(a) for a in program.snapshots]


def _ops(graph, op) -> list:
    return [n for n in graph.nodes if n.op == op]


def test_the_gradient_of_a_split_into_steps_is_one_concatenation():
    x = kiln.randn(7, 3, 5, requires_grad=True)
    w = kiln.randn(7, 3, 5)

    def step(x):
        halves = [x[:3], x[3:]]                     # nested, as kiln.nn.rnn splits time
        parts = [h[i] for h in halves for i in range(h.shape[0])]
        sum((p * w[i]).tanh().sum() for i, p in enumerate(parts)).backward()
        return x.grad
    graph, inputs = _traced(step, x)
    assert len(_ops(graph, "pad")) >= 7
    after = concatenate_padded_sums(graph)
    after.verify()
    assert not _ops(after, "pad")
    (cat,) = _ops(after, "cat")
    assert len(cat.inputs) == 7 and cat.attr_dict["axis"] == 0
    assert_same_results(graph, after, inputs, rtol=1e-6)


def test_gaps_are_filled_with_zeros():
    x = kiln.randn(6, 4, requires_grad=True)

    def step(x):
        (x[0].exp().sum() + x[2:4].sin().sum() + x[5].cos().sum()).backward()
        return x.grad
    graph, inputs = _traced(step, x)
    after = concatenate_padded_sums(graph)
    after.verify()
    (cat,) = _ops(after, "cat")
    assert [v.shape for v in cat.inputs] == [(1, 4), (1, 4), (2, 4), (1, 4), (1, 4)]
    assert_same_results(graph, after, inputs, rtol=1e-6)


def test_overlapping_or_inner_axis_pieces_stay_pads():
    x = kiln.randn(6, 4, requires_grad=True)

    def overlapping(x):
        (x[:4].exp().sum() + x[2:].sin().sum()).backward()
        return x.grad
    graph, _ = _traced(overlapping, x)
    assert concatenate_padded_sums(graph) is graph

    def columns(x):                 # side by side within rows: left to a fused kernel
        (x[:, :2].exp().sum() + x[:, 2:].sin().sum()).backward()
        return x.grad
    graph, _ = _traced(columns, x)
    assert concatenate_padded_sums(graph) is graph


def test_corpus_keeps_its_results():
    for name in sorted(CASES):
        graph, inputs = traced(name)
        optimized, _ = optimize(graph)
        after = concatenate_padded_sums(optimized)
        after.verify()
        assert_same_results(graph, after, inputs, rtol=1e-5, atol=1e-5)
