"""Tensor.apply_ and Tensor.map_ (a Python function per element, CPU only) against PyTorch."""

import numpy as np
import pytest
import torch

import kiln


def test_apply_and_map_match_torch():
    values = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    k, t = kiln.tensor(values), torch.tensor(values)
    assert k.apply_(lambda v: v * v - 1) is k
    t.apply_(lambda v: v * v - 1)
    np.testing.assert_array_equal(k.numpy(), t.numpy())
    row = np.array([1.0, -1.0, 0.5], dtype=np.float32)
    k.map_(kiln.tensor(row), lambda x, y: max(x, y))
    t.map_(torch.tensor(row), lambda x, y: max(x, y))
    np.testing.assert_array_equal(k.numpy(), t.numpy())
    ki, ti = kiln.tensor([1, 2, 3]), torch.tensor([1, 2, 3])
    ki.apply_(lambda v: v // 2)
    ti.apply_(lambda v: v // 2)
    assert ki.tolist() == ti.tolist() and ki.dtype == kiln.int64


def test_apply_refuses_a_leaf_that_requires_grad_and_compiled_calls_break():
    with pytest.raises(RuntimeError):
        kiln.ones(2, requires_grad=True).apply_(lambda v: v)

    def f(x):
        y = x * 2
        y.apply_(lambda v: v + 1)
        return y * 3
    x = kiln.tensor([1.0, 2.0])
    compiled = kiln.compile(f)
    with pytest.warns(UserWarning, match="apply_ calls a Python function"):
        first = compiled(x)
    np.testing.assert_array_equal(first.numpy(), [9.0, 15.0])
    np.testing.assert_array_equal(compiled(kiln.tensor([0.0, 1.0])).numpy(), [3.0, 9.0])
