"""nn.utils.parametrizations.orthogonal against torch's: the three maps (matrix_exp, cayley,
householder), square, tall, wide and batched weights, with and without trivialization; values,
gradients, a few optimizer steps, assignment, state_dict keys and the errors. Where torch
completes a non-square weight's basis with random columns (the `base` buffer), kiln's run
takes torch's buffer."""

import warnings

import numpy as np
import pytest
import torch

import kiln

MAPS = ["matrix_exp", "cayley", "householder"]


def orthogonal_linear(lib, weight, **kwargs):
    layer = lib.nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
    with lib.no_grad():
        layer.weight.copy_(lib.tensor(weight))
    return lib.nn.utils.parametrizations.orthogonal(layer, **kwargs)


def same_base(k, t, name="weight"):
    """Give kiln's layer torch's `base` (random columns for a non-square weight)."""
    tb = getattr(t.parametrizations, name)[0]
    if getattr(tb, "base", None) is not None:
        getattr(k.parametrizations, name)[0].base = kiln.tensor(tb.base.numpy())


def close(a, b, tol=1e-10):
    np.testing.assert_allclose(np.asarray(a.detach().numpy()), b.detach().numpy(), rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("shape", [(4, 4), (5, 3), (3, 5)])
@pytest.mark.parametrize("orthogonal_map", MAPS)
@pytest.mark.parametrize("use_trivialization", [True, False])
def test_orthogonal_values_gradients_and_training_match_torch(shape, orthogonal_map,
                                                              use_trivialization):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape)
    kw = dict(orthogonal_map=orthogonal_map, use_trivialization=use_trivialization)
    t, k = orthogonal_linear(torch, w, **kw), orthogonal_linear(kiln, w, **kw)
    same_base(k, t)
    close(k.parametrizations.weight.original, t.parametrizations.weight.original)
    close(k.weight, t.weight)
    W = k.weight.detach().numpy()
    gram = W.T @ W if shape[0] >= shape[1] else W @ W.T
    np.testing.assert_allclose(gram, np.eye(min(shape)), atol=1e-10)      # orthogonal
    t_opt = torch.optim.SGD(t.parameters(), lr=0.1)
    k_opt = kiln.optim.SGD(k.parameters(), lr=0.1)
    x = rng.standard_normal((3, shape[1]))
    for _ in range(3):
        for layer, opt, lib in ((t, t_opt, torch), (k, k_opt, kiln)):
            opt.zero_grad()
            (layer(lib.tensor(x)) ** 3).sum().backward()
            opt.step()
        close(k.parametrizations.weight.original.grad, t.parametrizations.weight.original.grad,
              1e-9)
        close(k.weight, t.weight, 1e-9)


def test_square_default_needs_no_random_base_and_state_dict_keys_match():
    w = np.random.default_rng(1).standard_normal((2, 4, 4))          # a batch of matrices
    t_mod, k_mod = torch.nn.Module(), kiln.nn.Module()
    t_mod.w = torch.nn.Parameter(torch.tensor(w))
    k_mod.w = kiln.nn.Parameter(kiln.tensor(w))
    torch.nn.utils.parametrizations.orthogonal(t_mod, "w")
    kiln.nn.utils.parametrizations.orthogonal(k_mod, "w")
    close(k_mod.w, t_mod.w)                       # the Q of w's QR with diag(R) > 0
    assert list(k_mod.state_dict()) == list(t_mod.state_dict())
    assert type(k_mod.parametrizations.w[0]).__name__ == "_Orthogonal"


@pytest.mark.parametrize("orthogonal_map", MAPS)
def test_assigning_an_orthogonal_matrix_matches_torch(orthogonal_map):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 4))
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    for use_trivialization in (True, False):
        kw = dict(orthogonal_map=orthogonal_map, use_trivialization=use_trivialization)
        t, k = orthogonal_linear(torch, w, **kw), orthogonal_linear(kiln, w, **kw)
        if not use_trivialization and orthogonal_map != "householder":
            for lib, layer in ((torch, t), (kiln, k)):
                with pytest.raises(NotImplementedError, match="use_trivialization=False"):
                    layer.weight = lib.tensor(q)
            continue
        t.weight = torch.tensor(q)
        k.weight = kiln.tensor(q)
        close(k.parametrizations.weight.original, t.parametrizations.weight.original)
        close(k.weight, t.weight)
        np.testing.assert_allclose(k.weight.detach().numpy(), q, atol=1e-12)


def test_orthogonal_errors_match_torch():
    for lib in (torch, kiln):
        orth = lib.nn.utils.parametrizations.orthogonal
        with pytest.raises(ValueError, match="Expected a matrix or batch of matrices. Got a "
                                             "tensor of 1 dimensions."):
            orth(lib.nn.BatchNorm1d(3))
        with pytest.raises(ValueError, match='orthogonal_map has to be one of "matrix_exp", '
                                             '"cayley", "householder". Got: qr'):
            orth(lib.nn.Linear(3, 3), orthogonal_map="qr")
        with pytest.raises(ValueError, match="has no parameter or buffer with name 'kernel'"):
            orth(lib.nn.Linear(3, 3), "kernel")
        layer = orth(lib.nn.Linear(3, 3))
        with pytest.raises(ValueError, match="Expected a matrix or batch of matrices of shape"):
            layer.weight = lib.ones(2, 2)


def test_a_right_inverse_that_is_not_implemented_registers_as_the_identity():
    class NoInverse(torch.nn.Module):
        def forward(self, x):
            return 2 * x

        def right_inverse(self, x):
            raise NotImplementedError

    class KilnNoInverse(kiln.nn.Module):
        forward, right_inverse = NoInverse.forward, NoInverse.right_inverse

    w = np.arange(6.0).reshape(2, 3)
    values = []
    for lib, cls in ((torch, NoInverse), (kiln, KilnNoInverse)):
        layer = lib.nn.Linear(3, 2).double()
        with lib.no_grad():
            layer.weight.copy_(lib.tensor(w))
        lib.nn.utils.parametrize.register_parametrization(layer, "weight", cls())
        values.append((layer.parametrizations.weight.original, layer.weight))
    close(values[1][0], values[0][0])
    close(values[1][1], values[0][1])


def test_stateless_functional_call_is_func_functional_call_and_warns_like_torch():
    w = np.random.default_rng(3).standard_normal((3, 3))
    x = np.ones((2, 3))
    outputs = []
    for lib in (torch, kiln):
        layer = lib.nn.Linear(3, 3).double()
        with pytest.warns(FutureWarning, match="torch.func.functional_call"):
            out = lib.nn.utils.stateless.functional_call(layer, {"weight": lib.tensor(w)},
                                                         (lib.tensor(x),))
        outputs.append(out - layer.bias)       # the module's own bias took part
    close(outputs[1], outputs[0])


@pytest.mark.parametrize("orthogonal_map", MAPS)
def test_compiled_training_of_an_orthogonal_layer_repeats_eager_without_a_fallback(
        orthogonal_map):
    w = np.random.default_rng(4).standard_normal((4, 4))
    x = kiln.tensor(np.random.default_rng(5).standard_normal((3, 4)))

    def run(compiled):
        layer = orthogonal_linear(kiln, w, orthogonal_map=orthogonal_map)
        opt = kiln.optim.SGD(layer.parameters(), lr=0.1)

        def step():
            opt.zero_grad()
            loss = (layer(x) ** 3).sum()
            loss.backward()
            opt.step()
            return loss
        step = kiln.compile(step) if compiled else step
        return [float(step()) for _ in range(4)], layer.weight.detach().numpy()
    eager = run(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = run(True)
    notes = [str(w.message) for w in caught if "kiln.compile" in str(w.message)]
    assert not notes, notes         # matrix_exp too: one extern, its squarings its own business
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-9)
    np.testing.assert_allclose(compiled[1], eager[1], rtol=1e-9, atol=1e-12)
