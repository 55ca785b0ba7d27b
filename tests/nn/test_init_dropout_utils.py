"""Initializers (bounds and spread vs PyTorch's formulas), dropout statistics, grad clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kiln
from kiln.nn import init


def _values(t) -> np.ndarray:
    return t.detach().numpy()


def test_calculate_gain_and_fans_match_torch():
    for name, param in [("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None),
                        ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2),
                        ("selu", None)]:
        assert init.calculate_gain(name, param) == torch.nn.init.calculate_gain(name, param)
    for shape in [(4, 3), (8, 2, 3, 3), (5, 6, 7)]:
        assert init._calculate_fan_in_and_fan_out(kiln.empty(*shape)) == \
            torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(*shape))
    with pytest.raises(ValueError):
        init._calculate_fan_in_and_fan_out(kiln.empty(3))
    with pytest.raises(ValueError):
        init.calculate_gain("swish")


def _check_uniform(values, bound):
    assert np.all(np.abs(values) <= bound)
    assert np.abs(values).max() > 0.9 * bound              # fills the range
    assert abs(values.std() - bound / math.sqrt(3)) < 0.05 * bound


def test_uniform_family_bounds():
    w = kiln.empty(200, 100, requires_grad=True)
    init.uniform_(w, -0.5, 0.5)
    _check_uniform(_values(w), 0.5)
    assert w.requires_grad and w.is_leaf
    init.xavier_uniform_(w, gain=2.0)
    _check_uniform(_values(w), 2.0 * math.sqrt(6 / 300))
    init.kaiming_uniform_(w, a=math.sqrt(5))
    _check_uniform(_values(w), 1 / math.sqrt(100))         # Linear's default bound
    init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu")
    _check_uniform(_values(w), math.sqrt(2) * math.sqrt(3 / 200))


def test_normal_family_std():
    w = kiln.empty(300, 200)
    for fn, std in [(lambda: init.normal_(w, 1.0, 0.2), 0.2),
                    (lambda: init.xavier_normal_(w), math.sqrt(2 / 500)),
                    (lambda: init.kaiming_normal_(w, nonlinearity="relu"), math.sqrt(2 / 200)),
                    (lambda: init.kaiming_normal_(w, a=0.1, mode="fan_out"),
                     math.sqrt(2 / (1 + 0.01)) / math.sqrt(300))]:
        fn()
        assert abs(_values(w).std() - std) < 0.03 * std


def test_trunc_normal_constant_eye_orthogonal():
    w = kiln.empty(200, 200)
    init.trunc_normal_(w, mean=0.5, std=1.0, a=-0.5, b=1.0)
    v = _values(w)
    assert v.min() >= -0.5 and v.max() <= 1.0 and v.std() > 0.2
    init.trunc_normal_(w, std=0.02)
    assert abs(_values(w).std() - 0.02) < 0.002
    init.constant_(w, 0.3)
    assert np.all(_values(w) == np.float32(0.3))
    init.zeros_(w)
    init.ones_(w)
    assert np.all(_values(w) == 1)
    e = kiln.empty(3, 5)
    init.eye_(e)
    np.testing.assert_array_equal(_values(e), np.eye(3, 5))
    for shape in [(6, 4), (4, 6), (5, 2, 3)]:
        q = kiln.empty(*shape, dtype=kiln.float64)
        init.orthogonal_(q, gain=2.0)
        flat = _values(q).reshape(shape[0], -1)
        small = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
        np.testing.assert_allclose(small, 4 * np.eye(min(flat.shape)), atol=1e-10)


def test_layer_default_initialization_matches_torch_formulas():
    lin = kiln.nn.Linear(400, 300)
    _check_uniform(_values(lin.weight), 1 / math.sqrt(400))
    _check_uniform(_values(lin.bias), 1 / math.sqrt(400))
    conv = kiln.nn.Conv2d(16, 64, 5)
    bound = 1 / math.sqrt(16 * 25)
    _check_uniform(_values(conv.weight), bound)
    assert np.all(np.abs(_values(conv.bias)) <= bound)
    emb = kiln.nn.Embedding(1000, 50, padding_idx=3)
    assert abs(_values(emb.weight).std() - 1.0) < 0.05
    assert not np.any(_values(emb.weight)[3])
    lstm = kiln.nn.LSTM(10, 100)
    for p in lstm.parameters():
        assert np.all(np.abs(_values(p)) <= 0.1)
    mha = kiln.nn.MultiheadAttention(64, 4)
    _check_uniform(_values(mha.in_proj_weight), math.sqrt(6 / (64 + 192)))
    assert not np.any(_values(mha.in_proj_bias)) and not np.any(_values(mha.out_proj.bias))
    bn = kiln.nn.BatchNorm2d(4)
    assert np.all(_values(bn.weight) == 1) and not np.any(_values(bn.bias))


def test_initialization_is_reproducible_with_manual_seed():
    kiln.manual_seed(7)
    a = _values(kiln.nn.Linear(5, 5).weight).copy()
    kiln.manual_seed(7)
    np.testing.assert_array_equal(_values(kiln.nn.Linear(5, 5).weight), a)


# ----------------------------------------------------------------------------- dropout

def test_dropout_statistics_and_eval_identity():
    kiln.manual_seed(0)
    x = kiln.ones(200, 500)
    drop = kiln.nn.Dropout(0.3)
    y = _values(drop(x))
    zeroed = np.mean(y == 0)
    assert abs(zeroed - 0.3) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.7)
    assert abs(y.mean() - 1.0) < 0.02
    drop.eval()
    assert drop(x) is x
    assert not np.any(_values(kiln.nn.functional.dropout(x, 1.0)))
    assert kiln.nn.functional.dropout(x, 0.0) is x
    with pytest.raises(ValueError):
        kiln.nn.Dropout(1.5)


def test_dropout_gradient_uses_the_same_mask():
    x = kiln.ones(50, 40, requires_grad=True)
    y = kiln.nn.functional.dropout(x, 0.5)
    y.sum().backward()
    np.testing.assert_allclose(_values(x.grad), _values(y))


def test_dropout2d_zeroes_whole_channels():
    x = kiln.ones(20, 30, 4, 4)
    y = _values(kiln.nn.Dropout2d(0.5)(x))
    per_channel = y.reshape(20, 30, 16)
    assert np.all((per_channel == 0).all(-1) | (per_channel == 2).all(-1))
    assert 0.35 < np.mean(per_channel[..., 0] == 0) < 0.65


# ----------------------------------------------------------------------------- utils

def _grads_pair(norm_type, max_norm):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (2, 2, 2)]
    arrays = [rng.normal(size=s) for s in shapes]
    k_params = [kiln.nn.Parameter(kiln.zeros(*s, dtype=kiln.float64)) for s in shapes]
    t_params = [torch.nn.Parameter(torch.zeros(*s, dtype=torch.float64)) for s in shapes]
    for a, k, t in zip(arrays, k_params, t_params):
        k.grad = kiln.tensor(a)
        t.grad = torch.from_numpy(a.copy())
    k_total = kiln.nn.utils.clip_grad_norm_(k_params, max_norm, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(t_params, max_norm, norm_type)
    return k_params, t_params, k_total, t_total


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    k_params, t_params, k_total, t_total = _grads_pair(float(norm_type), max_norm)
    assert isinstance(k_total, kiln.Tensor) and k_total.ndim == 0
    np.testing.assert_allclose(k_total.numpy(), t_total.numpy(), rtol=1e-12)
    for k, t in zip(k_params, t_params):
        np.testing.assert_allclose(k.grad.numpy(), t.grad.numpy(), rtol=1e-12)



def test_clip_grad_norm_error_if_nonfinite_compiles_whole_and_checks_every_replay():
    # the finiteness check read the norm into Python: a graph break that ran the step eagerly;
    # now a graph node checks it, and a replay meeting an infinite gradient raises as eager does
    rng = np.random.default_rng(1)
    x0, w0 = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    runs = {}
    for name in ("torch", "eager", "compiled"):
        lib = torch if name == "torch" else kiln
        w = lib.tensor(w0, requires_grad=True)
        opt = lib.optim.SGD([w], lr=0.1)

        def step(x, scale):
            opt.zero_grad()
            loss = ((x @ w).tanh() * scale).square().mean()
            loss.backward()
            total = lib.nn.utils.clip_grad_norm_([w], 0.5, error_if_nonfinite=True)
            opt.step()
            return loss, total

        if name == "compiled":
            step = kiln.compile(step, fullgraph=True)
        x = lib.tensor(x0)
        scale = lib.tensor(3.0)
        runs[name] = [[float(v.detach()) for v in step(x, scale)] for _ in range(3)]
        with pytest.raises(RuntimeError, match="total norm of order 2.0 for gradients from "
                                               "`parameters` is non-finite"):
            step(x, lib.tensor(float("inf")))
        runs[name].append(w.detach().numpy().tolist())     # the failing step changed nothing
    for name in ("eager", "compiled"):
        np.testing.assert_allclose(np.array(runs[name][:3]), np.array(runs["torch"][:3]),
                                   rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(runs[name][3], runs["torch"][3], rtol=1e-6, err_msg=name)

def test_clip_grad_value_and_vector_round_trip():
    p = kiln.nn.Parameter(kiln.tensor([1.0, 2.0, 3.0]))
    p.grad = kiln.tensor([-5.0, 0.5, 5.0])
    kiln.nn.utils.clip_grad_value_([p], 1.0)
    np.testing.assert_array_equal(p.grad.numpy(), [-1.0, 0.5, 1.0])
    net = kiln.nn.Linear(3, 2)
    vec = kiln.nn.utils.parameters_to_vector(net.parameters())
    assert tuple(vec.shape) == (8,)
    kiln.nn.utils.vector_to_parameters(kiln.arange(8.0), net.parameters())
    np.testing.assert_array_equal(net.weight.detach().numpy().ravel(), np.arange(6.0))
    np.testing.assert_array_equal(net.bias.detach().numpy(), [6.0, 7.0])
    assert net.weight.requires_grad
