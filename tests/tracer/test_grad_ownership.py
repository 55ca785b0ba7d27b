"""`.grad` owns its memory: a gradient that nothing else holds is stored as it is (a view too,
when nothing else holds its base: no copy, as PyTorch's AccumulateGrad steals it), and one
that the user can reach (the gradient passed to backward, a retained or hooked gradient, the
same gradient reaching two leaves) is copied. Values against PyTorch; aliasing by memory."""

import numpy as np
import pytest
import torch

import kiln


def _shares(a: kiln.Tensor, b: kiln.Tensor) -> bool:
    return np.shares_memory(a.detach().cpu().numpy(), b.detach().cpu().numpy())


def test_one_gradient_reaching_two_leaves_and_the_seed_is_copied_for_each():
    a, b = kiln.ones(3, requires_grad=True), kiln.ones(3, requires_grad=True)
    ta, tb = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    seed = kiln.tensor([1.0, 2.0, 3.0])
    (a + b).backward(seed)
    (ta + tb).backward(torch.tensor([1.0, 2.0, 3.0]))
    assert not _shares(a.grad, b.grad) and not _shares(a.grad, seed)
    a.grad += 1                    # the user's in-place change reaches only a.grad
    np.testing.assert_array_equal(b.grad.numpy(), tb.grad.numpy())
    np.testing.assert_array_equal(seed.numpy(), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(a.grad.numpy(), ta.grad.numpy() + 1)


def test_a_gradient_a_leaf_hook_kept_is_not_taken_by_grad():
    b, tb = kiln.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    kept, tkept = [], []
    b.register_hook(kept.append)
    tb.register_hook(tkept.append)
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    (kiln.tensor(x) + b).square().sum().backward()      # b's gradient: a fresh sum
    (torch.tensor(x) + tb).square().sum().backward()
    assert not _shares(b.grad, kept[0])
    b.grad.zero_()
    np.testing.assert_array_equal(kept[0].numpy(), tkept[0].numpy())


def test_retained_and_hooked_gradients_are_not_aliased_with_leaf_grads():
    x = kiln.ones(2, 3, requires_grad=True)
    tx = torch.ones(2, 3, requires_grad=True)
    kept = []
    x.register_hook(lambda g: kept.append(g))
    y, ty = x.t(), tx.t()
    y.retain_grad()
    ty.retain_grad()
    w = np.arange(6.0, dtype=np.float32).reshape(3, 2)
    (y * kiln.tensor(w)).sum().backward()
    (ty * torch.tensor(w)).sum().backward()
    assert not _shares(x.grad, y.grad) and not _shares(x.grad, kept[0])
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
    np.testing.assert_array_equal(y.grad.numpy(), ty.grad.numpy())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_linear_gradients_are_taken_without_a_copy_and_accumulate_right(device, monkeypatch):
    from kiln.tracer import autograd
    taken = []
    check = autograd._memory_unshared
    monkeypatch.setattr(autograd, "_memory_unshared", lambda g: taken.append(check(g)) or
                        taken[-1])
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((5, 4)).astype(np.float32)
    w_np = rng.standard_normal((3, 4)).astype(np.float32)
    b_np = rng.standard_normal(3).astype(np.float32)
    w = kiln.tensor(w_np, device=device, requires_grad=True)
    b = kiln.tensor(b_np, device=device, requires_grad=True)
    tw = torch.tensor(w_np, requires_grad=True)
    tb = torch.tensor(b_np, requires_grad=True)
    x, tx = kiln.tensor(x_np, device=device), torch.tensor(x_np)
    out = kiln.nn.functional.linear(x, w, b)
    out.square().sum().backward()
    # the weight's gradient is a transposed view of a fresh product, and the bias's a fresh
    # sum: nothing else holds their memory, so `.grad` takes it as it is
    assert taken == [True, True]
    assert w.grad._data.base is not None and w.grad._data.flags.c_contiguous
    first = w.grad
    kiln.nn.functional.linear(x, w, b).sum().backward()      # accumulates in place
    assert w.grad is first
    torch.nn.functional.linear(tx, tw, tb).square().sum().backward()
    torch.nn.functional.linear(tx, tw, tb).sum().backward()
    np.testing.assert_allclose(w.grad.cpu().numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.grad.cpu().numpy(), tb.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert not _shares(w.grad, x) and not _shares(w.grad, out)


def test_autograd_grad_and_create_graph_leave_grads_as_before():
    x = kiln.tensor([1.0, 2.0], requires_grad=True)
    tx = torch.tensor([1.0, 2.0], requires_grad=True)
    (g,) = kiln.autograd.grad((x * x).sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad((tx * tx).sum(), tx, create_graph=True)
    np.testing.assert_array_equal(g.detach().numpy(), tg.detach().numpy())
    g.sum().backward()
    tg.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
