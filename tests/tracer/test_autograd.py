"""Autograd behaviour against PyTorch: accumulation, modes, hooks, errors, higher order."""

import numpy as np
import pytest
import torch

import kiln


def test_pytorch_intro_example():
    x = kiln.randn(2, 2, requires_grad=True)
    y = x + 2
    z = y * y * 3
    out = z.mean()
    out.backward()
    np.testing.assert_allclose(x.grad.numpy(), (1.5 * (x + 2)).detach().numpy(), rtol=1e-6)


def test_grad_accumulates_over_backward_calls():
    x = kiln.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])


def test_backward_of_non_scalar_needs_gradient():
    x = kiln.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (x * 2).backward()


def test_backward_twice_through_freed_graph():
    x = kiln.ones(3, requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_retain_graph_allows_second_backward():
    x = kiln.ones(3, requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.e * np.ones(3), rtol=1e-6)


def test_inplace_change_of_saved_tensor_is_detected():
    x = kiln.ones(3, requires_grad=True)
    y = x * 2
    z = y * y
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_inplace_on_leaf_requiring_grad_fails():
    x = kiln.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        x.add_(1)


def test_inplace_on_non_leaf_matches_torch():
    def run(lib):
        x = lib.tensor([1.0, -2.0, 3.0], requires_grad=True)
        y = x * 2
        y.mul_(3)
        y.add_(1)
        y.sigmoid_()
        (y * y).sum().backward()
        return x.grad.numpy()
    np.testing.assert_allclose(run(kiln), run(torch), rtol=1e-5)


def test_inplace_without_history_writes_through_views_and_bumps_versions():
    # an optimizer's kind of update (no grad mode, no trace): the write reaches views of the
    # tensor, bumps the version a saved tensor is checked against, and leaves it a leaf
    for lib in (kiln, torch):
        p = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
        view = p[1:]
        saved = (view + 1).sum()          # saves nothing of p's value: still backward-able
        y = p * p                         # saves p: must see the version change
        with lib.no_grad():
            p.mul_(2).add_(lib.tensor([1.0, 1.0, 1.0]))
        np.testing.assert_array_equal(view.detach().numpy(), [5.0, 7.0])
        assert p.is_leaf and p.requires_grad and p.grad_fn is None
        saved.backward()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_no_grad_and_decorators():
    x = kiln.ones(2, requires_grad=True)
    with kiln.no_grad():
        assert not (x * 2).requires_grad
    assert (x * 2).requires_grad

    @kiln.no_grad()
    def f(t):
        return t * 2
    assert not f(x).requires_grad
    with kiln.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    with kiln.inference_mode():
        assert not (x * 2).requires_grad
    with kiln.no_grad():
        with kiln.enable_grad():
            assert (x * 2).requires_grad


def test_inference_mode_marks_its_results_as_torch_does():
    for lib in (torch, kiln):
        x = lib.ones(2)
        with lib.inference_mode():
            assert lib.is_inference_mode_enabled(), lib.__name__
            y = x * 2
        assert not lib.is_inference_mode_enabled(), lib.__name__
        assert y.is_inference() and not x.is_inference(), lib.__name__
        with lib.inference_mode(False):
            assert not lib.is_inference_mode_enabled(), lib.__name__


def test_compiled_calls_under_inference_mode_make_inference_tensors_as_eager():
    fn = kiln.compile(lambda x: (x * 2 + 1, x[1:] * 3))
    x = kiln.ones(3)
    with kiln.inference_mode():
        for _ in range(3):                       # traced, then replayed
            assert [t.is_inference() for t in fn(x)] == [True, True]
    assert [t.is_inference() for t in fn(x)] == [False, False]


def test_broadcast_gradient_is_reduced_to_input_shape():
    def run(lib):
        a = lib.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
        b = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
        c = lib.tensor([[2.0], [3.0]], requires_grad=True)
        ((a * b + c) ** 2).sum().backward()
        return a.grad.numpy(), b.grad.numpy(), c.grad.numpy()
    for k, t in zip(run(kiln), run(torch)):
        np.testing.assert_allclose(k, t)


def test_autograd_grad_and_higher_order():
    def run(lib):
        x = lib.tensor([0.5, -1.0, 2.0], requires_grad=True)
        y = (x ** 3 * lib.sin(x)).sum()
        (g,) = lib.autograd.grad(y, x, create_graph=True)
        (gg,) = lib.autograd.grad(g.sum(), x)
        return g.detach().numpy(), gg.numpy()
    for k, t in zip(run(kiln), run(torch)):
        np.testing.assert_allclose(k, t, rtol=1e-6)


def test_autograd_grad_allow_unused():
    x = kiln.ones(2, requires_grad=True)
    z = kiln.ones(2, requires_grad=True)
    y = (x * 2).sum()
    with pytest.raises(RuntimeError, match="allow_unused"):
        kiln.autograd.grad(y, [x, z], retain_graph=True)
    gx, gz = kiln.autograd.grad(y, [x, z], allow_unused=True)
    assert gz is None and gx.tolist() == [2.0, 2.0]


def test_autograd_grad_of_no_inputs_is_refused_as_torch():
    for lib in (torch, kiln):
        x = lib.ones(2, requires_grad=True)
        y = (x * 2).sum()
        for empty in ([], ()):
            with pytest.raises(RuntimeError, match="cannot be empty"):
                lib.autograd.grad(y, empty, retain_graph=True)


def test_hooks_and_retain_grad():
    def run(lib):
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        seen = []
        x.register_hook(lambda g: seen.append(g.numpy().copy()))
        y = x * 3
        y.retain_grad()
        y.register_hook(lambda g: g * 2)
        (y * y).sum().backward()
        return x.grad.numpy(), y.grad.numpy(), seen[0]
    for k, t in zip(run(kiln), run(torch)):
        np.testing.assert_allclose(k, t)


def test_detach_and_requires_grad_():
    x = kiln.ones(2, requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad and d.grad_fn is None
    with pytest.raises(RuntimeError, match="floating point"):
        kiln.ones(2, dtype=kiln.int64).requires_grad_()


def test_gradcheck_passes_and_catches_wrong_gradient():
    x = kiln.randn(3, dtype=kiln.float64, requires_grad=True)
    assert kiln.autograd.gradcheck(lambda t: (t.tanh() * t).sum(), (x,))
    y = kiln.randn(3, dtype=kiln.float64, requires_grad=True)

    def wrong(t):   # the hook doubles the gradient, so it no longer matches the function
        t2 = t * 1
        if t2.requires_grad:
            t2.register_hook(lambda g: g * 2)
        return t2.sum()
    with pytest.raises(kiln.autograd.GradcheckError):
        kiln.autograd.gradcheck(wrong, (y,))


# every output of these, as torch gives it: integer and bool results (indices, pivots, counts,
# casts) never require grad, float ones from an input that requires grad do
INTEGER_OUTPUTS = {
    "lu_factor": lambda L, x: L.linalg.lu_factor(x),
    "lu_factor_ex": lambda L, x: L.linalg.lu_factor_ex(x),
    "lu": lambda L, x: L.lu(x, get_infos=True),
    "linalg.lu": lambda L, x: L.linalg.lu(x),
    "lu_unpack": lambda L, x: L.lu_unpack(*L.linalg.lu_factor(x)),
    "inv_ex": lambda L, x: L.linalg.inv_ex(x),
    "cholesky_ex": lambda L, x: L.linalg.cholesky_ex(x @ x.mT + L.eye(3)),
    "max": lambda L, x: L.max(x, 1),
    "min": lambda L, x: L.min(x, 0),
    "sort": lambda L, x: L.sort(x, 1),
    "argsort": lambda L, x: L.argsort(x, 1),
    "topk": lambda L, x: L.topk(x, 2),
    "kthvalue": lambda L, x: L.kthvalue(x, 2),
    "mode": lambda L, x: L.mode(x, 1),
    "median": lambda L, x: L.median(x, 1),
    "cummax": lambda L, x: L.cummax(x, 1),
    "max_pool_indices": lambda L, x: L.nn.functional.max_pool1d(x[None], 2,
                                                                 return_indices=True),
    "frexp": lambda L, x: L.frexp(x),
    "argmax": lambda L, x: L.argmax(x),
    "searchsorted": lambda L, x: L.searchsorted(x.sort(1).values, x),
    "casts": lambda L, x: (x.long(), x.int(), x.bool(), x.to(L.uint8), x > 0),
    "matrix_rank": lambda L, x: L.linalg.matrix_rank(x),
}


def _grad_flags(out) -> list:
    if isinstance(out, (tuple, list)):
        return [flag for part in out for flag in _grad_flags(part)]
    return [(str(out.dtype).split(".")[-1], out.requires_grad, out.grad_fn is not None)]


@pytest.mark.parametrize("op", sorted(INTEGER_OUTPUTS))
def test_integer_outputs_never_require_grad(op):
    a = np.random.default_rng(0).standard_normal((3, 3))
    got = _grad_flags(INTEGER_OUTPUTS[op](kiln, kiln.tensor(a, requires_grad=True)))
    want = _grad_flags(INTEGER_OUTPUTS[op](torch, torch.tensor(a, requires_grad=True)))
    assert got == want


def _first_order_maml(lib, w0, xs, ys, lr=0.1):
    """First-order MAML's inner loop and outer backward: the inner `autograd.grad` takes the
    fast weights (non-leaf) as inputs without create_graph."""
    w = lib.tensor(w0, requires_grad=True)
    fast = w
    for x, y in zip(xs, ys):
        loss = ((lib.tensor(x) @ fast - lib.tensor(y)) ** 2).mean()
        (g,) = lib.autograd.grad(loss, [fast], only_inputs=True)
        fast = fast - lr * g
    outer = ((lib.tensor(xs[0]) @ fast).sin() ** 2).sum()
    outer.backward()
    return w.grad.numpy()


def test_autograd_grad_with_non_leaf_inputs_leaves_the_graph_below_them_whole():
    # kiln ran and freed every node behind the inputs too: the outer backward of first-order
    # MAML raised "Trying to backward through the graph a second time"; and only_inputs (a
    # deprecated argument PyTorch still takes) was a TypeError
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 2)).astype(np.float32)
    xs = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(3)]
    ys = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(3)]
    np.testing.assert_allclose(_first_order_maml(kiln, w0, xs, ys),
                               _first_order_maml(torch, w0, xs, ys), rtol=1e-5, atol=1e-6)


def test_a_graph_freed_by_backward_still_raises_as_torch():
    x = kiln.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    kiln.autograd.grad(y, [x])
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()
