"""Compiled cross_entropy / nll_loss with class-index targets over many classes pick each
target's value by a one-hot sum: values and gradients equal eager's and PyTorch's, for weights,
ignore_index and K-dim inputs, and the compiled graph has no gather or scatter for the pick."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F

C = F._ONE_HOT_PICK_MIN_CLASSES      # the fewest classes picked by a one-hot sum

RNG = np.random.default_rng(0)

CASES = [
    # (input shape, kwargs)
    ((12, C), {}),
    ((12, C + 5), {"reduction": "sum"}),
    ((12, C), {"reduction": "none", "ignore_index": 2}),
    ((10, C), {"weight": True, "ignore_index": 1}),
    ((4, C, 3, 2), {"weight": True}),                 # K-dim: (N, C, d1, d2)
    ((9, C), {"label_smoothing": 0.1}),
]


def _loss(lib, x, t, kwargs, w):
    kw = dict(kwargs)
    if kw.pop("weight", False):
        kw["weight"] = w
    return lib.nn.functional.cross_entropy(x, t, **kw)


@pytest.mark.parametrize("shape,kwargs", CASES)
def test_compiled_cross_entropy_matches_eager_and_torch(shape, kwargs):
    x = RNG.standard_normal(shape).astype(np.float32)
    classes = shape[1]
    t = RNG.integers(0, classes, (shape[0],) + shape[2:])
    if len(shape) == 2:     # a -inf logit off the target: the one-hot sum must not turn it NaN
        x[0, (t[0] + 1) % classes] = -np.inf
    w = RNG.uniform(0.5, 2.0, classes).astype(np.float32)
    xk = kiln.tensor(x.copy(), requires_grad=True)
    xc = kiln.tensor(x.copy(), requires_grad=True)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    tk, wk = kiln.from_numpy(t), kiln.from_numpy(w)

    def f(x, t, w):
        loss = _loss(kiln, x, t, kwargs, w)
        return loss.sum() if loss.ndim else loss

    cf = kiln.compile(f, backend="c", fullgraph=True)
    eager = f(xk, tk, wk)
    compiled = cf(xc, tk, wk)
    ref = _loss(torch, xt, torch.from_numpy(t), kwargs, torch.from_numpy(w))
    ref = ref.sum() if ref.ndim else ref
    np.testing.assert_allclose(compiled.detach().numpy(), eager.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(compiled.detach().numpy(), ref.detach().numpy(), rtol=1e-5)
    eager.backward()
    compiled.backward()
    ref.backward()
    np.testing.assert_allclose(xc.grad.numpy(), xk.grad.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(xc.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    ops = {n.op for p in cf.programs() for n in p.graph.nodes}
    assert "index_add" not in ops, ops                # the pick is a one-hot sum
    if not kwargs.get("weight"):
        assert "take" not in ops, ops                 # (a class weight is still a gather)


def test_out_of_range_target_still_raises_when_compiled():
    x = kiln.from_numpy(RNG.standard_normal((4, C)).astype(np.float32))
    cf = kiln.compile(lambda x, t: F.cross_entropy(x, t), backend="c")
    cf(x, kiln.from_numpy(np.array([0, 1, 2, 1])))
    with pytest.raises(IndexError):
        cf(x, kiln.from_numpy(np.array([0, C, 2, 1])))


def test_few_classes_keep_the_gather():
    x = kiln.from_numpy(RNG.standard_normal((6, C - 1)).astype(np.float32))
    t = kiln.from_numpy(RNG.integers(0, C - 1, 6))
    (graph,) = kiln.compiler.trace(lambda x, t: F.cross_entropy(x, t), x, t).graphs
    assert "take" in {n.op for n in graph.nodes}
