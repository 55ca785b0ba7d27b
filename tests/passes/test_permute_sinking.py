"""sink_permutes: elementwise ops on a permuted value run in that value's order, the permute moved
below them where it cancels or feeds a conv product's image; same results, and a compiled conv
step then hands its activations to the next conv channels-last, with no layout copy."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
import kiln.nn.functional as F
from kiln import program_cache
from kiln.passes import pipeline
from kiln.passes.conv_products import form_conv_products
from kiln.passes.decompose import decompose
from kiln.passes.permute_sinking import sink_permutes
from kiln.runtime import conv_cpu
from tests.passes.helpers import assert_same_results, nodes_of, traced_optimized


def _two_convs(x, w1, b1, w2):
    return F.conv2d(F.relu(F.conv2d(x, w1, b1)), w2).sum()


def _conv_args(seed=0):
    rng = np.random.default_rng(seed)
    return [kiln.tensor(rng.standard_normal(s).astype(np.float32)) for s in
            ((2, 3, 8, 7), (5, 3, 3, 3), (5,), (4, 5, 3, 3))]


def test_bias_and_relu_run_channels_last_and_the_next_conv_reads_a_view():
    graph, inputs = traced_optimized(_two_convs, *_conv_args())
    graph = form_conv_products(graph)
    after = sink_permutes(graph)
    after.verify()
    relu, = nodes_of(after, "relu")
    add, = nodes_of(after, "add")
    assert relu.out.shape == add.out.shape == (2, 6, 5, 5)          # N, H, W, C
    second = nodes_of(after, "unfold_matmul")[1]
    image = {n.out: n for n in after.nodes}[second.inputs[0]]
    assert image.op == "permute" and image.attr_dict["perm"] == (0, 3, 1, 2)
    assert image.inputs[0] is relu.out
    bias = {n.out: n for n in after.nodes}[add.inputs[1]]
    assert bias.op == "reshape" and bias.out.shape == (1, 1, 1, 5)
    assert_same_results(graph, after, inputs, rtol=0, atol=0)       # the same ops, moved


def test_a_conv_backward_runs_channels_last_from_its_input_gradient():
    x, w1, b1, w2 = _conv_args(1)
    for t in (x, w1, b1, w2):
        t.requires_grad_(True)

    def step(x, w1, b1, w2):
        _two_convs(x, w1, b1, w2).backward()
        return x.grad, w1.grad, b1.grad, w2.grad
    graph, inputs = traced_optimized(step, x, w1, b1, w2)
    graph = form_conv_products(graph)
    after, _ = pipeline.optimize(sink_permutes(graph))
    after.verify()
    folds = nodes_of(after, "matmul_fold")
    # conv2's input gradient feeds the ReLU's backward: made channels-last; conv1's is x.grad,
    # returned as it is
    assert sorted(f.attr_dict.get("channels_last", False) for f in folds) == [False, True]
    where, = [n for n in nodes_of(after, "where") if n.out.shape == (2, 6, 5, 5)]
    bias_grad, = [n for n in nodes_of(after, "sum") if n.out.shape == (1, 1, 1, 5)]
    assert bias_grad.inputs[0] is where.out
    assert_same_results(graph, after, inputs, rtol=1e-6, atol=1e-6)


def test_a_permute_undone_by_its_reader_cancels():
    x = kiln.randn(3, 4, 5)
    b = kiln.randn(5, 1, 4)         # its dims in another order under the inverse: permuted

    def fn(x, b):
        return ((x.permute(2, 0, 1) * 2).exp() + b).permute(1, 2, 0)
    graph, inputs = traced_optimized(fn, x, b)
    after, _ = pipeline.optimize(sink_permutes(graph))
    after.verify()
    assert [n.out.shape for n in nodes_of(after, "exp")] == [(3, 4, 5)]
    assert [n.out.shape for n in nodes_of(after, "add")] == [(3, 4, 5)]
    assert [n.out.shape for n in nodes_of(after, "permute")] == [(1, 4, 5)]    # b's
    assert_same_results(graph, after, inputs, rtol=0, atol=0)


def test_batch_norm_statistics_keep_their_layout():
    # the mean and variance are broadcast back over the values they were reduced from: that
    # reduce-and-broadcast runs slower channels-last, so the conv's bias add stays NCHW
    x, w1, b1, w2 = _conv_args(2)

    def fn(x, w1, b1, w2):
        y = F.relu(F.batch_norm(F.conv2d(x, w1, b1), None, None, training=True))
        return F.conv2d(y, w2).sum()
    graph, _ = traced_optimized(fn, x, w1, b1, w2)
    graph, _ = pipeline.optimize(form_conv_products(decompose(graph)))
    assert sink_permutes(graph) is graph


@pytest.mark.parametrize("case", ["output", "matmul", "other reader"])
def test_it_does_not_fire_where_the_permute_would_not_pay(case):
    x = kiln.randn(4, 6)
    fns = {
        # the result leaves the graph: a permuted view there would be copied
        "output": lambda x: (x.t() * 2).exp(),
        # a matmul reads the result: it would read a strided view instead of a buffer
        "matmul": lambda x: (x.t() * 2) @ x,
        # read in its own order by a non-permute view as well as permuted back
        "other reader": lambda x: ((x.t() * 2).reshape(24).sum(), (x.t() * 2).t()),
    }
    graph, _ = traced_optimized(fns[case], x)
    assert sink_permutes(graph) is graph


def _count_layout_copies(monkeypatch) -> list:
    """Count the copies `unfold_into` makes of an NCHW image to channels-last."""
    copies = []
    real = np.ascontiguousarray

    class _NumPy:
        def __getattr__(self, name):
            return getattr(np, name)

        def ascontiguousarray(self, a, *args, **kwargs):
            copies.append(a.shape)
            return real(a, *args, **kwargs)
    monkeypatch.setattr(conv_cpu, "np", _NumPy())
    return copies


def _train_step(model):
    def step(x):
        for p in model.parameters():
            p.grad = None
        loss = (model(x) ** 2).mean()
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]
    return step


@pytest.mark.parametrize("sinking", [True, False])
def test_a_compiled_conv_step_reads_its_activations_without_a_layout_copy(monkeypatch, sinking):
    if conv_cpu._functions() is None:
        pytest.skip("no C compiler: the conv products run in NumPy")
    if not sinking:             # the control: without the pass, conv2's image is copied
        monkeypatch.setattr(pipeline, "sink_permutes", lambda g: g)
        monkeypatch.setattr(program_cache, "compiler_fingerprint", lambda: "no sinking")
    kiln.manual_seed(0)
    model = kiln.nn.Sequential(kiln.nn.Conv2d(1, 8, 3), kiln.nn.ReLU(), kiln.nn.Conv2d(8, 6, 3),
                               kiln.nn.ReLU())
    x = kiln.randn(4, 1, 12, 12)
    want_loss, want_grads = _train_step(model)(x)
    compiled = kiln.compile(_train_step(model))
    compiled(x)                 # traces (runs eagerly), then compiles
    copies = _count_layout_copies(monkeypatch)
    loss, grads = compiled(x)
    assert (len(copies) == 0) == sinking
    np.testing.assert_allclose(loss.numpy(), want_loss.numpy(), rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
