"""A Python bool in an index is a 0-d boolean mask, as PyTorch reads it: `x[True]` adds a dim of
size 1, `x[False]` one of size 0; reads, writes and their gradients against torch, eagerly and
compiled."""

import numpy as np
import pytest
import torch

import kiln

KEYS = [True, False, (None, True), (Ellipsis, True), (True, 1), (1, False, slice(0, 2)),
        (True, slice(None), 2), (False, Ellipsis), (True, [1, 0])]


def _both(make):
    return make(torch), make(kiln)


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_reads_match_torch(key):
    t, k = _both(lambda m: m.arange(6.).reshape(2, 3))
    want = t[key]
    got = k[key]
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    got = kiln.compile(lambda x: x[key] * 2)(k)
    np.testing.assert_array_equal(got.numpy(), want.numpy() * 2)


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_writes_and_their_gradients_match_torch(key):
    results = []
    for m in (torch, kiln):
        x = m.arange(1., 7.).reshape(2, 3).requires_grad_()
        y = x * 2
        y[key] = 0.5
        (y * m.arange(6.).reshape(2, 3)).sum().backward()
        plain = m.zeros(2, 3)
        plain[key] = 4.0
        results.append((y.detach().numpy(), x.grad.numpy(), plain.numpy(),
                        type(y.grad_fn).__name__))
    (ty, tg, tp, tn), (ky, kg, kp, kn) = results
    np.testing.assert_array_equal(ky, ty)
    np.testing.assert_array_equal(kg, tg)
    np.testing.assert_array_equal(kp, tp)
    assert kn == tn
