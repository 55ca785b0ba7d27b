"""concatenate_padded_sums: the gradient of a tensor split into steps (a sum of zero-padded
pieces, nested for kiln.nn.rnn's balanced split) becomes one concatenation; same results."""

import kiln
from kiln.passes.pad_sums import concatenate_padded_sums
from tests.passes.helpers import assert_same_results, nodes_of, traced_optimized


def test_the_gradient_of_a_split_into_steps_is_one_concatenation():
    x = kiln.randn(7, 3, 5, requires_grad=True)
    w = kiln.randn(7, 3, 5)

    def step(x):
        halves = [x[:3], x[3:]]                     # nested, as kiln.nn.rnn splits time
        parts = [h[i] for h in halves for i in range(h.shape[0])]
        sum((p * w[i]).tanh().sum() for i, p in enumerate(parts)).backward()
        return x.grad
    graph, inputs = traced_optimized(step, x)
    assert len(nodes_of(graph, "pad")) >= 7
    after = concatenate_padded_sums(graph)
    after.verify()
    assert not nodes_of(after, "pad")
    (cat,) = nodes_of(after, "cat")
    assert len(cat.inputs) == 7 and cat.attr_dict["axis"] == 0
    assert_same_results(graph, after, inputs, rtol=1e-6)


def test_gaps_are_filled_with_zeros():
    x = kiln.randn(6, 4, requires_grad=True)

    def step(x):
        (x[0].exp().sum() + x[2:4].sin().sum() + x[5].cos().sum()).backward()
        return x.grad
    graph, inputs = traced_optimized(step, x)
    after = concatenate_padded_sums(graph)
    after.verify()
    (cat,) = nodes_of(after, "cat")
    assert [v.shape for v in cat.inputs] == [(1, 4), (1, 4), (2, 4), (1, 4), (1, 4)]
    assert_same_results(graph, after, inputs, rtol=1e-6)


def test_overlapping_or_inner_axis_pieces_stay_pads():
    x = kiln.randn(6, 4, requires_grad=True)

    def overlapping(x):
        (x[:4].exp().sum() + x[2:].sin().sum()).backward()
        return x.grad
    graph, _ = traced_optimized(overlapping, x)
    assert concatenate_padded_sums(graph) is graph

    def columns(x):                 # side by side within rows: left to a fused kernel
        (x[:, :2].exp().sum() + x[:, 2:].sin().sum()).backward()
        return x.grad
    graph, _ = traced_optimized(columns, x)
    assert concatenate_padded_sums(graph) is graph

