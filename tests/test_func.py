"""kiln.func against torch.func on the same data: functional_call, grad, grad_and_value, vjp,
jvp, jacrev, jacfwd, hessian, vmap, and the per-sample-gradient and model-ensembling patterns
of PyTorch's tutorials."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.func as tf

import kiln
import kiln.func as kf
from kiln.func.pytree import tree_flatten
from tests.parity import assert_close, random_array, to_kiln, to_torch

TOL = dict(atol=1e-5, rtol=1e-5)
TOL64 = dict(atol=1e-10, rtol=1e-10)


def assert_trees_close(k, t, tol=TOL, what="value"):
    k_leaves, k_spec = tree_flatten(k)
    t_leaves, t_spec = tree_flatten(t)
    assert k_spec == t_spec, f"{what}: structure {k_spec} != torch {t_spec}"
    for i, (a, b) in enumerate(zip(k_leaves, t_leaves)):
        assert_close(a, b, what=f"{what} leaf {i}", **tol)


def mlp(lib, sizes=(4, 6, 3), seed=0, batchnorm=False):
    rng = np.random.default_rng(seed)
    layers = [lib.nn.Linear(sizes[0], sizes[1])]
    if batchnorm:
        layers.append(lib.nn.BatchNorm1d(sizes[1]))
    layers += [lib.nn.ReLU(), lib.nn.Linear(sizes[1], sizes[2])]
    model = lib.nn.Sequential(*layers)
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(random_array(tuple(p.shape), np.float32, -0.8, 0.8, rng)))
    return model


X = random_array((5, 4), np.float32, rng=np.random.default_rng(1))
Y = np.array([0, 2, 1, 2, 0])


# ----------------------------------------------------------------------------- functional_call

def new_state(model, lib, scale=2.0):
    return {k: (v.detach() * scale) for k, v in model.named_parameters()}


@pytest.mark.parametrize("batchnorm", [False, True])
def test_functional_call_matches_torch_and_restores_the_module(batchnorm):
    km, tm = mlp(kiln, batchnorm=batchnorm), mlp(torch, batchnorm=batchnorm)
    k_before = {k: (v, v.detach().numpy().copy()) for k, v in km.state_dict(keep_vars=True).items()}
    k_state, t_state = new_state(km, kiln), new_state(tm, torch)
    k_bufs = {k: v.clone() for k, v in km.named_buffers()}
    t_bufs = {k: v.clone() for k, v in tm.named_buffers()}
    k_out = kf.functional_call(km, (k_state, k_bufs), (to_kiln(X),))
    t_out = tf.functional_call(tm, (t_state, t_bufs), (to_torch(X),))
    assert_close(k_out, t_out, **TOL)
    for k in k_bufs:                         # batch norm updated the buffers it was given
        assert_close(k_bufs[k], t_bufs[k], what=k, **TOL)
    for name, (tensor, values) in k_before.items():
        now = km.state_dict(keep_vars=True)[name]
        assert now is tensor, f"{name} was not put back"
        np.testing.assert_array_equal(now.detach().numpy(), values)
    # the module's own parameters give its own result again
    assert_close(km(to_kiln(X)), tm(to_torch(X)), **TOL)


def test_functional_call_gradients_reach_the_given_tensors():
    km, tm = mlp(kiln), mlp(torch)
    kp = {k: v.detach().requires_grad_() for k, v in km.named_parameters()}
    tp = {k: v.detach().requires_grad_() for k, v in tm.named_parameters()}
    kf.functional_call(km, kp, to_kiln(X)).sum().backward()
    tf.functional_call(tm, tp, to_torch(X)).sum().backward()
    for k in kp:
        assert_close(kp[k].grad, tp[k].grad, what=k, **TOL)
    assert all(p.grad is None for p in km.parameters())


def test_functional_call_restores_after_an_exception():
    km = mlp(kiln)
    own = dict(km.named_parameters())
    with pytest.raises(RuntimeError):
        kf.functional_call(km, new_state(km, kiln), (kiln.zeros(5, 7),))   # wrong width
    assert dict(km.named_parameters()) == own
    assert all(km.get_parameter(k) is v for k, v in own.items())


def test_functional_call_partial_dict_kwargs_and_unknown_keys():
    class Scaled(kiln.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = kiln.nn.Linear(4, 3)

        def forward(self, x, *, scale=1.0):
            return self.lin(x) * scale
    m = Scaled()
    w = kiln.ones(3, 4)
    out = kf.functional_call(m, {"lin.weight": w, "extra": kiln.zeros(1)}, (to_kiln(X),),
                             {"scale": 3.0})
    expected = (to_kiln(X) @ w.T + m.lin.bias) * 3.0
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-6)
    assert not hasattr(m, "extra")           # an unknown name was set for the call only


def test_functional_call_errors_match_torch():
    km, tm = mlp(kiln), mlp(torch)
    with pytest.raises(RuntimeError) as k_err:
        kf.functional_call(km, {"foo": kiln.ones(1)}, (to_kiln(X),), strict=True)
    with pytest.raises(RuntimeError) as t_err:
        tf.functional_call(tm, {"foo": torch.ones(1)}, (to_torch(X),), strict=True)
    assert str(k_err.value) == str(t_err.value)
    with pytest.raises(ValueError) as k_err:
        kf.functional_call(km, ({"0.bias": kiln.ones(6)}, {"0.bias": kiln.ones(6)}), to_kiln(X))
    with pytest.raises(ValueError) as t_err:
        tf.functional_call(tm, ({"0.bias": torch.ones(6)}, {"0.bias": torch.ones(6)}),
                           to_torch(X))
    assert str(k_err.value) == str(t_err.value)


def tied(lib):
    class Tied(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = lib.nn.Linear(4, 4, bias=False)
            self.b = lib.nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight
            with lib.no_grad():
                self.a.weight.copy_(lib.tensor(np.eye(4, dtype=np.float32) * 0.5 + 0.1))

        def forward(self, x):
            return self.b(self.a(x))
    return Tied()


def test_functional_call_tie_weights():
    w = random_array((4, 4), np.float32)
    km, tm = tied(kiln), tied(torch)
    k_out = kf.functional_call(km, {"a.weight": to_kiln(w)}, to_kiln(X))
    t_out = tf.functional_call(tm, {"a.weight": to_torch(w)}, to_torch(X))
    assert_close(k_out, t_out, **TOL)                       # b.weight followed a.weight
    k_untied = kf.functional_call(km, {"a.weight": to_kiln(w)}, to_kiln(X), tie_weights=False)
    t_untied = tf.functional_call(tm, {"a.weight": to_torch(w)}, to_torch(X), tie_weights=False)
    assert_close(k_untied, t_untied, **TOL)
    with pytest.raises(ValueError, match="which are tied"):
        kf.functional_call(km, {"a.weight": to_kiln(w), "b.weight": to_kiln(w * 2)}, to_kiln(X))


# ----------------------------------------------------------------------------- transforms

A = random_array((3,), np.float64, rng=np.random.default_rng(3))
B = random_array((3,), np.float64, rng=np.random.default_rng(4))


def scalar_fn(lib):
    return lambda x, y: (lib.sin(x) * y).sum() + (x ** 3).sum() * y[0]


def vector_fn(lib):
    return lambda x, y: lib.tanh(x * y) + x.sum() * y


def both(make):
    return (kiln, kf, make(kiln), to_kiln), (torch, tf, make(torch), to_torch)


@pytest.mark.parametrize("argnums", [0, 1, (0, 1), (1,)])
@pytest.mark.parametrize("name", ["grad", "grad_and_value"])
def test_grad_and_grad_and_value_match_torch(name, argnums):
    results = [getattr(F, name)(f, argnums)(conv(A), conv(B)) for _, F, f, conv in
               both(scalar_fn)]
    assert_trees_close(*results, tol=TOL64)


def test_grad_has_aux_and_dict_argument():
    def make(lib):
        def f(params, x):
            out = (lib.tanh(x @ params["w"]) + params["b"]).pow(2).sum()
            return out, {"out": out.detach() * 2}
        return f
    w = random_array((3, 2), np.float64)
    results = []
    for lib, F, f, conv in both(make):
        params = {"w": conv(w), "b": conv(np.array([0.5, -1.0]))}
        results.append(F.grad(f, has_aux=True)(params, conv(A)))
    assert_trees_close(*results, tol=TOL64)
    results = [F.grad_and_value(f, has_aux=True)({"w": conv(w), "b": conv(np.zeros(2))},
                                                 conv(A)) for _, F, f, conv in both(make)]
    assert_trees_close(*results, tol=TOL64)


@pytest.mark.parametrize("name", ["jacrev", "jacfwd"])
@pytest.mark.parametrize("argnums", [0, (0, 1)])
def test_jacobians_match_torch(name, argnums):
    for make in (scalar_fn, vector_fn):
        results = [getattr(F, name)(f, argnums)(conv(A), conv(B)) for _, F, f, conv in
                   both(make)]
        assert_trees_close(*results, tol=TOL64)


def test_jacrev_of_tuple_output_and_has_aux():
    def make(lib):
        return lambda x: ((x.sin(), (x * x).sum()), x.cos())
    results = [F.jacrev(f, has_aux=True)(conv(A)) for _, F, f, conv in both(make)]
    assert_trees_close(*results, tol=TOL64)


@pytest.mark.parametrize("argnums", [0, 1, (0, 1)])
def test_hessian_matches_torch(argnums):
    results = [F.hessian(f, argnums)(conv(A), conv(B)) for _, F, f, conv in both(scalar_fn)]
    assert_trees_close(*results, tol=TOL64)


def test_nested_grad_and_jacrev_of_jacrev():
    def make(lib):
        return lambda x: (x.sin() * x).sum()
    results = [F.grad(lambda x: F.grad(f)(x).sum())(conv(A))
               for _, F, f, conv in both(make)]
    assert_trees_close(*results, tol=TOL64)
    results = [F.jacrev(F.jacrev(f))(conv(A)) for _, F, f, conv in both(make)]
    assert_trees_close(*results, tol=TOL64)


def test_vjp_matches_torch():
    def make(lib):
        return lambda x, y: (lib.tanh(x) * y, (x * y).sum())
    results = []
    for lib, F, f, conv in both(make):
        out, fn = F.vjp(f, conv(A), conv(B))
        first = fn((conv(B), conv(np.array(2.0))))
        again = fn((conv(A), conv(np.array(-1.0))))     # vjp_fn may be called again
        results.append((out, first, again))
    assert_trees_close(*results, tol=TOL64)


def test_jvp_matches_torch():
    def make(lib):
        return lambda x, y: {"a": lib.tanh(x) * y, "b": lib.softmax(x * y, 0), "c": x.sum()}
    results = [F.jvp(f, (conv(A), conv(B)), (conv(B), conv(A))) for _, F, f, conv in
               both(make)]
    assert_trees_close(*results, tol=TOL64)


def test_linearize_matches_jvp():
    f = vector_fn(kiln)
    out, jvp_fn = kf.linearize(lambda x: f(x, to_kiln(B)), to_kiln(A))
    expected = tf.jvp(lambda x: vector_fn(torch)(x, to_torch(B)), (to_torch(A),),
                      (to_torch(B),))
    assert_trees_close((out, jvp_fn(to_kiln(B))), expected, tol=TOL64)


def test_grad_of_parameters_requiring_grad_stays_differentiable():
    # MAML-style: the inner gradient is differentiated again by an ordinary backward
    results = []
    for lib, F, _, conv in both(lambda lib: None):
        model = mlp(lib)
        params = dict(model.named_parameters())

        def loss(p, x, y):
            return lib.nn.functional.cross_entropy(F.functional_call(model, p, (x,)), y)
        g = F.grad(loss)(params, conv(X), conv(Y))
        fast = {k: params[k] - 0.1 * g[k] for k in params}
        loss(fast, conv(X), conv(Y)).backward()
        results.append({k: p.grad for k, p in model.named_parameters()})
    assert_trees_close(*results, tol=TOL)


def test_grad_error_messages():
    with pytest.raises(RuntimeError, match="Expected f\\(\\*args\\) to return a scalar Tensor, "
                       "got tensor with 1 dims"):
        kf.grad(lambda x: x * 2)(to_kiln(A))
    with pytest.raises(RuntimeError, match="should be a tuple: \\(output, aux\\)"):
        kf.grad(lambda x: x.sum(), has_aux=True)(to_kiln(A))
    with pytest.raises(RuntimeError, match="floating point"):
        kf.grad(lambda x: x.sum())(kiln.tensor([1, 2]))


def test_grad_of_an_unused_argument_is_zero():
    g = kf.grad(lambda x, y: (x * 2).sum(), argnums=(0, 1))(to_kiln(A), to_kiln(B))
    t = tf.grad(lambda x, y: (x * 2).sum(), argnums=(0, 1))(to_torch(A), to_torch(B))
    assert_trees_close(g, t, tol=TOL64)


# ----------------------------------------------------------------------------- vmap

def test_per_sample_gradients_match_torch():
    results = []
    for lib, F, _, conv in both(lambda lib: None):
        model = mlp(lib)
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}

        def compute_loss(params, buffers, sample, target):
            predictions = F.functional_call(model, (params, buffers), (sample.unsqueeze(0),))
            return lib.nn.functional.cross_entropy(predictions, target.unsqueeze(0))
        per_sample = F.vmap(F.grad(compute_loss), in_dims=(None, None, 0, 0))
        results.append(per_sample(params, buffers, conv(X), conv(Y)))
    assert_trees_close(*results, tol=TOL)
    assert tuple(results[0]["0.weight"].shape) == (5, 6, 4)
    # each slice is that sample's own gradient
    model = mlp(kiln)
    kiln.nn.functional.cross_entropy(model(to_kiln(X[2:3])), to_kiln(Y[2:3])).backward()
    np.testing.assert_allclose(results[0]["0.weight"][2].numpy(), model[0].weight.grad.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_per_sample_gradients_of_a_conv_net():
    images = random_array((3, 1, 6, 6), np.float32, rng=np.random.default_rng(9))
    labels = np.array([1, 0, 1])
    results = []
    for lib, F, _, conv in both(lambda lib: None):
        lib.manual_seed(0)
        model = lib.nn.Sequential(lib.nn.Conv2d(1, 2, 3), lib.nn.ReLU(), lib.nn.Flatten(),
                                  lib.nn.Linear(32, 2))
        rng = np.random.default_rng(0)
        with lib.no_grad():
            for p in model.parameters():
                p.copy_(lib.tensor(random_array(tuple(p.shape), np.float32, -0.5, 0.5, rng)))
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p, x, y):
            out = F.functional_call(model, p, (x.unsqueeze(0),))
            return lib.nn.functional.cross_entropy(out, y.unsqueeze(0))
        results.append(F.vmap(F.grad(loss), in_dims=(None, 0, 0))(params, conv(images),
                                                                  conv(labels)))
    assert_trees_close(*results, tol=TOL)


@pytest.mark.parametrize("same_data", [True, False])
def test_model_ensembling_matches_torch(same_data):
    batches = random_array((3, 5, 4), np.float32, rng=np.random.default_rng(6))
    results = []
    for lib, F, _, conv in both(lambda lib: None):
        models = [mlp(lib, seed=s) for s in range(3)]
        params, buffers = F.stack_module_state(models)
        base = copy.deepcopy(models[0])

        def fmodel(params, buffers, x):
            return F.functional_call(base, (params, buffers), (x,))
        if same_data:
            out = F.vmap(fmodel, in_dims=(0, 0, None))(params, buffers, conv(X))
        else:
            out = F.vmap(fmodel)(params, buffers, conv(batches))
        out.pow(2).sum().backward()
        results.append((out, {k: p.grad for k, p in params.items()}))
        if lib is kiln:          # each ensemble member's output is that model's own
            member = models[1](conv(X if same_data else batches[1]))
            np.testing.assert_allclose(out[1].detach().numpy(), member.detach().numpy(),
                                       rtol=1e-5, atol=1e-6)
    assert_trees_close(*results, tol=TOL)


def test_stack_module_state_matches_torch():
    results = []
    for lib, F, _, _ in both(lambda lib: None):
        models = [mlp(lib, seed=s, batchnorm=True) for s in range(2)]
        params, buffers = F.stack_module_state(models)
        assert all(p.requires_grad and p.grad_fn is None for p in params.values())
        assert not any(b.requires_grad for b in buffers.values())
        results.append((params, buffers))
    assert_trees_close(*results, tol=TOL)
    with pytest.raises(RuntimeError, match="Expected at least one model"):
        kf.stack_module_state([])
    a, b = mlp(kiln), mlp(kiln)
    b.eval()
    with pytest.raises(RuntimeError, match="same training/eval mode"):
        kf.stack_module_state([a, b])


def test_vmap_in_dims_structures_and_out_dims():
    w = random_array((4, 3), np.float32)
    xs = random_array((2, 5, 4), np.float32)   # mapped over dim 1

    def make(lib):
        def f(p, x, scale=1.0):
            h = x @ p["w"] + p["b"]
            return h * scale, h.sum(), p["b"]
        return f
    results = []
    for lib, F, f, conv in both(make):
        params = {"w": conv(w), "b": conv(np.arange(3, dtype=np.float32))}
        mapped = F.vmap(f, in_dims=({"w": None, "b": None}, 1), out_dims=(1, 0, None))
        results.append(mapped(params, conv(xs), scale=2.0))
    assert_trees_close(*results, tol=TOL)
    assert tuple(results[0][0].shape) == (2, 5, 3)


def test_nested_vmap_matches_torch():
    m = random_array((3, 4, 2), np.float64)
    results = [F.vmap(F.vmap(lambda row: row.sum() * row, in_dims=1))(conv(m))
               for _, F, _, conv in both(lambda lib: None)]
    assert_trees_close(*results, tol=TOL64)


def test_vmap_of_jacrev_matches_torch():
    results = [F.vmap(F.jacrev(lambda x: x.sin() * x.sum()))(conv(np.stack([A, B])))
               for _, F, _, conv in both(lambda lib: None)]
    assert_trees_close(*results, tol=TOL64)


def test_vmap_randomness():
    x = kiln.ones(4, 3)
    with pytest.raises(RuntimeError, match="randomness error mode"):
        kf.vmap(lambda r: r * kiln.rand(3))(x)
    same = kf.vmap(lambda r: r * kiln.rand(3), randomness="same")(x)
    assert np.allclose(same.numpy(), same.numpy()[0])
    different = kf.vmap(lambda r: r * kiln.rand(3), randomness="different")(x)
    assert not np.allclose(different.numpy(), different.numpy()[0])


def test_vmap_errors():
    with pytest.raises(ValueError, match="We cannot vmap over non-Tensor arguments"):
        kf.vmap(lambda a, b: a * b, in_dims=(0, 0))(kiln.ones(3), 2.0)
    with pytest.raises(ValueError, match="in_dims is not compatible"):
        kf.vmap(lambda a, b: a * b, in_dims=(0,))(kiln.ones(3), kiln.ones(3))
    with pytest.raises(ValueError, match="same size"):
        kf.vmap(lambda a, b: a * b)(kiln.ones(3), kiln.ones(4))


def test_root_vmap_is_the_func_transform_and_maps_dicts_like_torch_vmap():
    # torch.vmap is torch.func.vmap: `from torch import vmap` maps over dicts of tensors too
    assert kiln.vmap is kf.vmap
    w = random_array((3, 4, 2), np.float32)
    results = [lib.vmap(lambda p, x: x @ p["w"] + p["b"], in_dims=({"w": 0, "b": None}, None))(
        {"w": conv(w), "b": conv(np.ones(2, np.float32))}, conv(X)) for lib, _, _, conv in
        both(lambda lib: None)]
    assert_trees_close(*results, tol=TOL)


def test_replace_all_batch_norm_modules_and_vmap_over_a_batch_norm_model():
    results = []
    for lib, F, _, conv in both(lambda lib: None):
        model = F.replace_all_batch_norm_modules_(mlp(lib, batchnorm=True))
        assert model[1].running_mean is None and not model[1].track_running_stats
        params = {k: v.detach() for k, v in model.named_parameters()}
        chunks = conv(np.stack([X, X[::-1].copy()]))
        results.append(F.vmap(lambda p, x: F.functional_call(model, p, (x,)),
                              in_dims=(None, 0))(params, chunks))
    assert_trees_close(*results, tol=TOL)
    assert kf.debug_unwrap(results[0]) is results[0]
