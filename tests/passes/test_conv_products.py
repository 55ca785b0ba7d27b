"""form_conv_products: a convolution's forward, weight-gradient and input-gradient products take
their unfold or fold inside (one primitive each), with the same results; compiled conv training
steps that run them agree with eager kiln and with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F
from kiln.ops import prims as P
from kiln.passes.conv_products import form_conv_products
from kiln.runtime import numpy_backend
from tests.passes.helpers import assert_same_results, nodes_of, traced_optimized


def _conv_step(stride, padding, dilation):
    def step(x, w, b):
        out = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
        (out.relu() * out).sum().backward()
        return out.detach(), x.grad, w.grad, b.grad
    return step


def _conv_inputs(n=3, c=4, h=9, w=8, o=5, k=(3, 2), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in
            ((n, c, h, w), (o, c) + k, (o,))]


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), ((2, 1), 1, (1, 2))])
def test_a_conv_step_runs_three_products_and_no_windows(stride, padding, dilation):
    x, w, b = (kiln.tensor(a, requires_grad=True) for a in _conv_inputs())
    graph, inputs = traced_optimized(_conv_step(stride, padding, dilation), x, w, b)
    assert len(nodes_of(graph, "unfold")) == 1 and len(nodes_of(graph, "fold")) == 1
    after = form_conv_products(graph)
    after.verify()
    ops = [n.op for n in after.nodes]
    assert "unfold" not in ops and "fold" not in ops
    assert [ops.count(op) for op in ("unfold_matmul", "matmul_unfold", "matmul_fold")] == \
        [1, 1, 1]
    assert_same_results(graph, after, inputs, rtol=1e-5, atol=1e-5)


def test_windows_read_by_anything_else_are_left_as_they_are():
    x, w = kiln.randn(2, 3, 6, 6), kiln.randn(27, 4)

    def fn(x, w):
        cols = P.unfold(x, kernel=(3, 3), stride=(1, 1), dilation=(1, 1))
        return cols.reshape(32, 27) @ w, cols.sum()      # the windows leave too
    graph, inputs = traced_optimized(fn, x, w)
    assert form_conv_products(graph) is graph


def test_a_product_read_by_more_than_its_fold_is_left_as_it_is():
    a, b = kiln.randn(32, 4), kiln.randn(4, 27)

    def fn(a, b):
        m = a @ b
        folded = P.fold(m.reshape(2, 4, 4, 3, 3, 3), size=(6, 6), kernel=(3, 3), stride=(1, 1),
                        dilation=(1, 1))
        return folded, m.exp()
    graph, inputs = traced_optimized(fn, a, b)
    assert form_conv_products(graph) is graph


def _torch_step(x, w, b, stride, padding, dilation):
    xt, wt, bt = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    out = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding,
                                     dilation=dilation)
    (out.relu() * out).sum().backward()
    return [t.detach().numpy() for t in (out, xt.grad, wt.grad, bt.grad)]


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, (2, 1))])
def test_compiled_conv_steps_match_eager_and_torch(backend, stride, padding, dilation,
                                                   monkeypatch):
    # chunks of two images (of 5): the products run as three chunks, the last one short
    arrays = _conv_inputs(n=5, c=6, h=11, w=10, o=7, k=(3, 3), seed=1)
    per_image = 9 * 6 * 4 * 11 * 10          # at most this many bytes of windows per image
    monkeypatch.setattr(numpy_backend, "_CHUNK_BYTES", 2 * per_image)
    monkeypatch.setattr(numpy_backend, "_threads", lambda: 1)
    step = _conv_step(stride, padding, dilation)
    compiled = kiln.compile(step, backend=backend)
    want = _torch_step(*arrays, stride, padding, dilation)
    for _ in range(2):                  # the trace, then a replay
        eager = [t.numpy() for t in step(*(kiln.tensor(a, requires_grad=True) for a in arrays))]
        got = [t.numpy() for t in compiled(*(kiln.tensor(a, requires_grad=True)
                                             for a in arrays))]
        for g, e, t in zip(got, eager, want):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(g, t, rtol=1e-4, atol=1e-4)
    (entry,) = compiled.entries.values()
    ops = {n.op for n in entry.graph.nodes}
    assert {"unfold_matmul", "matmul_unfold", "matmul_fold"} <= ops and "unfold" not in ops


def test_a_compiled_forward_saves_the_conv_input_not_its_windows():
    # a joint trace (backward called outside the compiled function): the products are formed
    # before the partition, so the forward saves the conv's input for the weight gradient
    arrays = _conv_inputs(n=4, c=8, h=10, w=10, o=6, k=(3, 3), seed=2)
    fn = kiln.compile(lambda x, w, b: (F.conv2d(x, w, b, padding=1).tanh() ** 2).sum(),
                      backend="c")
    grads = []
    for f in (fn, fn, lambda x, w, b: (F.conv2d(x, w, b, padding=1).tanh() ** 2).sum()):
        leaves = [kiln.tensor(a, requires_grad=True) for a in arrays]
        loss = f(*leaves)
        loss.backward()
        grads.append([float(loss)] + [t.grad.numpy() for t in leaves])
    for got in grads[:2]:               # the trace, then a replay, against eager
        for g, e in zip(got, grads[2]):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
    (entry,) = fn.entries.values()
    assert entry.partition is not None
    windows_bytes = 4 * 100 * 9 * 8 * 4
    assert all(v.nbytes < windows_bytes for v in entry.partition.saved)
    assert "matmul_unfold" in {n.op for n in entry.compiled.backward.graph.nodes}
