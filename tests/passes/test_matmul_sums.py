"""merge_matmul_sums: a sum of thin matrix products (a weight's gradient over the steps that
used it) becomes one product of concatenated operands, with the same results."""

import numpy as np

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
from kiln.passes.matmul_sums import merge_matmul_sums
from tests.passes.helpers import assert_same_results, nodes_of, traced_optimized


def test_a_weight_used_at_every_step_gets_its_gradient_from_one_product():
    kiln.manual_seed(0)
    w = kiln.randn(32, 16, requires_grad=True)
    xs = kiln.randn(6, 4, 16)

    def step(xs):
        h = kiln.zeros(4, 32)
        for t in range(6):          # the weight read at six steps: six gradient terms
            h = kiln.tanh(F.linear(xs[t], w) + h)
        h.sum().backward()
        return w.grad
    graph, inputs = traced_optimized(step, xs)
    grad_terms = [n for n in nodes_of(graph, "matmul") if n.out.shape == (32, 16)]
    assert len(grad_terms) == 6
    after = merge_matmul_sums(graph)
    after.verify()
    merged = [n for n in nodes_of(after, "matmul") if n.out.shape == (32, 16)]
    assert len(merged) == 1
    a, b = merged[0].inputs
    assert a.shape == (32, 24) and b.shape == (24, 16)      # the six batches side by side
    assert after.producers()[graph.outputs[0]].op == "matmul"   # the sum is the product
    assert_same_results(graph, after, inputs, rtol=1e-5, atol=1e-5)


def test_other_terms_of_the_sum_are_added_to_the_merged_product():
    a1, a2 = kiln.randn(40, 3), kiln.randn(40, 2)
    b1, b2 = kiln.randn(3, 30), kiln.randn(2, 30)
    c = kiln.randn(40, 30)
    graph, inputs = traced_optimized(lambda a1, b1, a2, b2, c: (a1 @ b1 + c) + a2 @ b2 * 1.0 + c.exp(),
                            a1, b1, a2, b2, c)
    after = merge_matmul_sums(graph)
    after.verify()
    (mm,) = nodes_of(after, "matmul")
    assert mm.inputs[0].shape == (40, 5)
    assert [n.op for n in after.nodes].count("add") == 2      # product + c + exp(c)
    assert_same_results(graph, after, inputs, rtol=1e-5, atol=1e-5)


def test_thick_products_and_shared_products_stay_as_they_are():
    # inner dimension 64 for a 32x32 result: copying the operands would cost more than the
    # results it saves
    thick = [kiln.randn(32, 64), kiln.randn(64, 32), kiln.randn(32, 64), kiln.randn(64, 32)]
    graph, _ = traced_optimized(lambda a, b, c, d: a @ b + c @ d, *thick)
    assert merge_matmul_sums(graph) is graph
    # a product read outside the sum must still be computed by itself
    thin = [kiln.randn(32, 2), kiln.randn(2, 32), kiln.randn(32, 2), kiln.randn(2, 32)]
    graph, _ = traced_optimized(lambda a, b, c, d: (a @ b + c @ d, (a @ b).exp()), *thin)
    assert merge_matmul_sums(graph) is graph



def test_compiled_lstm_training_step_matches_eager():
    # the pass's motivating case, through the whole compiler (C kernels, trials included)
    def make():
        kiln.manual_seed(0)
        rnn, head = nn.LSTM(8, 16, 2), nn.Linear(16, 5)
        opt = kiln.optim.SGD(list(rnn.parameters()) + list(head.parameters()), lr=0.5)

        def step(x, y):
            out, _ = rnn(x)
            loss = F.cross_entropy(head(out).view(-1, 5), y.view(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return rnn, step
    rng = np.random.default_rng(0)
    x = kiln.from_numpy(rng.standard_normal((7, 3, 8), dtype=np.float32))
    y = kiln.from_numpy(rng.integers(0, 5, (7, 3)))
    eager_rnn, eager_step = make()
    rnn, step = make()
    compiled = kiln.compile(step)
    for _ in range(5):          # the first traces; then replays, the trials and after them
        np.testing.assert_allclose(float(compiled(x, y)), float(eager_step(x, y)), rtol=1e-5)
    assert compiled.programs()
    for entry in compiled.entries.values():
        graph = entry.compiled.forward.graph
        # layer 1's weights and layer 0's recurrent one get their gradients from one product
        # each (not 7 per weight)
        assert len([n for n in nodes_of(graph, "matmul") if n.out.shape == (64, 16)]) == 3
        # the per-step gradients are concatenated once, for the input projection's gradient
        # (kiln.passes.pad_sums), and the recurrent weight's product reads that
        cats = [frozenset(n.inputs) for n in graph.nodes if n.op == "cat"]
        assert len(cats) == len(set(cats))
    for p, q in zip(rnn.parameters(), eager_rnn.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5,
                                   atol=1e-5)
