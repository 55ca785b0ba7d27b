"""Lazy modules: shapes inferred on the first call, then the ordinary class, with torch's
state_dict keys; with torch's weights loaded, the same outputs and gradients."""

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import torch_to_kiln_state

CASES = [
    ("LazyLinear", (3,), (2, 5)),
    ("LazyConv1d", (4, 3), (2, 2, 7)),
    ("LazyConv2d", (4, 3, 1, 1), (2, 3, 5, 5)),
    ("LazyConv3d", (2, 2), (1, 3, 4, 4, 4)),
    ("LazyConvTranspose1d", (4, 3, 2, 1, 1), (1, 2, 5)),
    ("LazyConvTranspose2d", (3, 2, 2), (1, 2, 3, 3)),
    ("LazyConvTranspose3d", (2, 2), (1, 3, 2, 2, 2)),
    ("LazyBatchNorm1d", (), (4, 3)),
    ("LazyBatchNorm2d", (), (4, 3, 2, 2)),
    ("LazyBatchNorm3d", (), (2, 3, 2, 2, 2)),
    ("LazyInstanceNorm1d", (), (2, 3, 5)),
    ("LazyInstanceNorm2d", (1e-5, 0.1, True, True), (2, 3, 4, 4)),
    ("LazyInstanceNorm3d", (), (2, 3, 2, 3, 2)),
]


@pytest.mark.parametrize("name,args,shape", CASES, ids=[c[0] for c in CASES])
def test_lazy_module_becomes_its_class_and_matches_torch(name, args, shape):
    x = np.random.default_rng(0).normal(size=shape)
    t_layer = getattr(torch.nn, name)(*args).double()
    k_layer = getattr(kiln.nn, name)(*args).double()
    assert k_layer.has_uninitialized_params() == t_layer.has_uninitialized_params()
    params_before = list(k_layer.parameters())
    t_out = t_layer(torch.tensor(x))
    k_layer(kiln.tensor(x))
    assert type(k_layer).__name__ == type(t_layer).__name__ == name[len("Lazy"):]
    assert list(k_layer.state_dict()) == list(t_layer.state_dict())
    assert all(a is b for a, b in zip(params_before, k_layer.parameters()))
    t_fresh = getattr(torch.nn, name)(*args).double()
    t_fresh(torch.tensor(x))
    k_layer.load_state_dict(torch_to_kiln_state(t_fresh))
    t_fresh.load_state_dict(t_fresh.state_dict())
    xt, xk = torch.tensor(x, requires_grad=True), kiln.tensor(x, requires_grad=True)
    t_out, k_out = t_fresh(xt), k_layer(xk)
    np.testing.assert_allclose(k_out.detach().numpy(), t_out.detach().numpy(), rtol=1e-9,
                               atol=1e-12)
    t_out.sum().backward()
    k_out.sum().backward()
    np.testing.assert_allclose(xk.grad.numpy(), xt.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_uninitialized_parameter_materializes_in_place():
    p = kiln.nn.UninitializedParameter()
    assert kiln.nn.parameter.is_lazy(p)
    p.materialize((2, 3))
    assert type(p) is kiln.nn.Parameter and tuple(p.shape) == (2, 3) and p.requires_grad
    b = kiln.nn.UninitializedBuffer()
    b.materialize((4,), dtype=kiln.float64)
    assert type(b) is kiln.Tensor and b.dtype == kiln.float64


@pytest.mark.parametrize("name, args, kwargs", [
    ("LazyLinear", (4,), {}), ("LazyLinear", (4,), {"bias": False}),
    ("LazyConv1d", (4, 3), {"stride": 2}), ("LazyConv2d", (4, 3), {"padding": 1, "bias": False}),
    ("LazyConv3d", (2, 3), {}), ("LazyConvTranspose2d", (4, 3), {"stride": 2}),
    ("LazyBatchNorm1d", (), {}), ("LazyBatchNorm2d", (), {"momentum": None}),
    ("LazyInstanceNorm2d", (), {}), ("LazyInstanceNorm1d", (), {"affine": False})])
def test_an_unbuilt_lazy_module_prints_as_torchs_and_draws_no_weights(name, args, kwargs):
    state = kiln.get_rng_state()
    k = getattr(kiln.nn, name)(*args, **kwargs)
    t = getattr(torch.nn, name)(*args, **kwargs)
    assert repr(k) == repr(t)
    assert (kiln.get_rng_state() == state).all()
