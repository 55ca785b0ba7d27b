"""In-place updates that write their result straight into the tensor's memory (`add_`, `sub_`,
`mul_`, `addcmul_`, `addcdiv_`, `lerp_`, `fill_`, `zero_` on the fast path: no autograd
history, not a view)
give the out-of-place op's bits and PyTorch's values, bump the version counter, and leave
every other case (autograd, views, casts, broadcasts, overlap) to the general path."""

import numpy as np
import pytest
import torch

import kiln

CASES = {
    "add_": (lambda x, a, b: x.add_(a), lambda x, a, b: x + a),
    "add_alpha": (lambda x, a, b: x.add_(a, alpha=-0.3), lambda x, a, b: x.add(a, alpha=-0.3)),
    "add_scalar": (lambda x, a, b: x.add_(1.5), lambda x, a, b: x + 1.5),
    "sub_": (lambda x, a, b: x.sub_(a, alpha=2), lambda x, a, b: x.sub(a, alpha=2)),
    "mul_": (lambda x, a, b: x.mul_(a), lambda x, a, b: x * a),
    "mul_scalar": (lambda x, a, b: x.mul_(0.9), lambda x, a, b: x * 0.9),
    "mul_row": (lambda x, a, b: x.mul_(a[0]), lambda x, a, b: x * a[0]),   # broadcast operand
    "addcmul_": (lambda x, a, b: x.addcmul_(a, b, value=0.1),
                 lambda x, a, b: x.addcmul(a, b, value=0.1)),
    "addcdiv_": (lambda x, a, b: x.addcdiv_(a, b.abs() + 1, value=-0.01),
                 lambda x, a, b: x.addcdiv(a, b.abs() + 1, value=-0.01)),
    "lerp_": (lambda x, a, b: x.lerp_(a, 0.25), lambda x, a, b: x.lerp(a, 0.25)),
    "lerp_large_weight": (lambda x, a, b: x.lerp_(a, 0.75), lambda x, a, b: x.lerp(a, 0.75)),
    "iadd": (lambda x, a, b: x.__iadd__(a), lambda x, a, b: x + a),
    "self_operand": (lambda x, a, b: x.mul_(x), lambda x, a, b: x * x),
    "fill_": (lambda x, a, b: x.fill_(0.3), lambda x, a, b: kiln.full_like(x, 0.3)),
    "zero_": (lambda x, a, b: x.zero_(), lambda x, a, b: kiln.zeros_like(x)),
}


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 4)).astype(dtype) for _ in range(3)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_inplace_update_equals_out_of_place_bits_and_torch(case, dtype, device):
    inplace, outplace = CASES[case]
    x, a, b = (kiln.tensor(v, device=device) for v in _data(dtype))
    expected = outplace(x, a, b).cpu().numpy()
    version = x._version[0]
    assert inplace(x, a, b) is x
    np.testing.assert_array_equal(x.cpu().numpy(), expected)     # the same bits
    assert x._version[0] == version + 1
    tx, ta, tb = (torch.tensor(v) for v in _data(dtype))
    inplace(tx, ta, tb)
    np.testing.assert_allclose(x.cpu().numpy(), tx.numpy(), rtol=1e-6, atol=1e-6)


def test_overlapping_and_cast_operands_take_the_general_path():
    x, tx = kiln.arange(6.0), torch.arange(6.0)
    x.add_(x.flip(0))                 # a reversed view of itself: NumPy-only overlap handling
    tx.add_(tx.flip(0))
    np.testing.assert_array_equal(x.numpy(), tx.numpy())
    y, ty = kiln.ones(3), torch.ones(3)
    y.mul_(kiln.tensor([2.0, 3.0, 4.0], dtype=kiln.float64))    # a cast back to float32
    ty.mul_(torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))
    assert y.dtype is kiln.float32
    np.testing.assert_array_equal(y.numpy(), ty.numpy())
    i, ti = kiln.tensor([1, 2]), torch.tensor([1, 2])
    i.mul_(3)
    ti.mul_(3)
    i.fill_(7.9)                      # an integer tensor: the general path's cast
    ti.fill_(7.9)
    np.testing.assert_array_equal(i.numpy(), ti.numpy())
    z, tz = kiln.ones(2, requires_grad=True) * 2, torch.ones(2, requires_grad=True) * 2
    z.zero_()                         # history: a zero gradient, through the general path
    tz.zero_()
    assert z.grad_fn is not None and tz.grad_fn is not None
    with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
        kiln.ones(3).add_(kiln.ones(2, 3))


def test_autograd_and_views_keep_their_rules():
    w = kiln.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w.mul_(2.0)
    with kiln.no_grad():
        w.mul_(2.0)                   # an optimizer's update
    np.testing.assert_array_equal(w.numpy(force=True), [2.0, 2.0, 2.0])
    # a tensor a node saved: the write bumps its version, and backward refuses the stale value
    x = kiln.ones(3)
    y = (w * x).sum()
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    # a non-leaf with history, and a view: written through the general path, grads as torch
    a, ta = kiln.tensor([1.0, 2.0], requires_grad=True), torch.tensor([1.0, 2.0],
                                                                      requires_grad=True)
    for lib, leaf in ((kiln, a), (torch, ta)):
        h = leaf * 3
        h.addcmul_(leaf, leaf, value=0.5)
        base = lib.zeros(2, 2)
        base[0].lerp_(h, 0.5)
        base.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-6)


@pytest.mark.gpu
def test_an_update_on_cuda_is_one_device_call(monkeypatch):
    from tests import fake_cuda
    x, a, b = (kiln.tensor(v, device="cuda") for v in _data(np.float32))
    calls = []
    real = fake_cuda._on_device

    def count(run, args=(), writes=(), stream=None):
        if not getattr(fake_cuda._CURRENT, "inside", False):
            calls.append(run)
        return real(run, args, writes, stream)
    monkeypatch.setattr(fake_cuda, "_on_device", count)
    x.add_(a)
    x.mul_(0.9)
    assert len(calls) == 2            # one ufunc each, into x: no temporary, no copy
    x.addcmul_(a, b, value=0.1)       # the operand's two products, then the add into x
    assert len(calls) == 5
    x.zero_()
    x.fill_(2.0)
    assert len(calls) == 7
