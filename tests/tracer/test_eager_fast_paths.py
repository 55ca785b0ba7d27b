"""Eager fast paths: softmax, log_softmax and mean run as one NumPy expression with one
autograd node (`kiln.tracer.functional.softmax_family`, `reductions`): the same values as the
composite they stand for, PyTorch's values and gradients (first and second order), PyTorch's
grad_fn names, and the composite still recorded under a trace."""

import numpy as np
import pytest
import torch

import kiln
from kiln.tracer.functional import reductions, softmax_family
from tests.parity import check_op

CASES = [((4, 7), -1), ((3, 5, 6), 1), ((2, 3), 0), ((5,), 0), ((2, 1, 4), 1)]
OPS = {"softmax": (kiln.softmax, torch.softmax),
       "log_softmax": (kiln.log_softmax, torch.log_softmax)}


def _composite(monkeypatch):
    """Turn the fast path off: the op runs as its primitives, as before it existed."""
    monkeypatch.setattr(softmax_family, "_fast_input", lambda *args: None)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,dim", CASES)
def test_fast_path_matches_torch(name, dtype, shape, dim):
    check_op(lambda lib, x: getattr(lib, name)(x, dim), [shape], dtype=dtype, low=-4, high=4)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 9), (64, 80)])   # below and above NumPy's fast-sum size
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # inf - inf, NaN * 0
def test_fast_path_values_are_the_composites_bitwise(name, dtype, shape, monkeypatch):
    a = np.random.default_rng(1).normal(0, 5, shape).astype(dtype)
    a[2, 3] = np.inf                                   # a row of NaN, silently, both ways
    a[4] = -np.inf
    g = np.random.default_rng(2).normal(0, 1, shape).astype(dtype)
    runs = []
    for fast in (True, False):
        if not fast:
            _composite(monkeypatch)
        x = kiln.tensor(a, requires_grad=True)
        y = OPS[name][0](x, -1)
        y.backward(kiln.tensor(g))
        runs.append((y.detach().numpy(), x.grad.numpy()))
    for fast_value, slow_value in zip(*runs):      # values, and first-order gradients
        np.testing.assert_array_equal(fast_value, slow_value)
    assert np.isnan(runs[0][0][2]).all() and np.isnan(runs[0][0][4]).all()


@pytest.mark.parametrize("name", sorted(OPS))
def test_one_node_with_pytorchs_name(name):
    x = kiln.randn(3, 4, requires_grad=True)
    y = OPS[name][0](x, 1)
    ty = OPS[name][1](torch.randn(3, 4, requires_grad=True), 1)
    assert y.grad_fn.name() == type(ty.grad_fn).__name__
    ((e, _),) = [f for f in y.grad_fn.next_functions if f[0] is not None]   # straight to x
    assert type(e).__name__ == "AccumulateGrad" and e.variable is x


@pytest.mark.parametrize("name", sorted(OPS))
def test_second_order_gradient_matches_torch(name):
    a = np.random.default_rng(2).normal(0, 2, (3, 5))
    w = np.random.default_rng(3).normal(0, 1, (3, 5))
    grads = []
    for lib, fn in zip((kiln, torch), OPS[name]):
        x = lib.tensor(a, requires_grad=True)
        (g,) = lib.autograd.grad((fn(x, 1) * lib.tensor(w)).sum(), x, create_graph=True)
        (gg,) = lib.autograd.grad((g * g).sum(), x)
        grads.append((g.detach().numpy(), gg.numpy()))
    for k, t in zip(*grads):
        np.testing.assert_allclose(k, t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPS))
def test_output_written_in_place_keeps_the_mathematical_gradient(name):
    a = np.random.default_rng(4).normal(0, 1, (4, 3))
    grads = []
    for lib, fn in zip((kiln, torch), OPS[name]):
        x = lib.tensor(a, requires_grad=True)
        out = fn(x, 1)
        if lib is torch:                   # PyTorch refuses the write; kiln keeps a copy
            out = out.clone()
        out.mul_(3).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(*grads, rtol=1e-10, atol=1e-12)


def test_no_grad_records_nothing():
    x = kiln.randn(2, 3, requires_grad=True)
    with kiln.no_grad():
        y = kiln.softmax(x, -1)
    assert y.grad_fn is None and not y.requires_grad


@pytest.mark.parametrize("name", sorted(OPS))
def test_compiled_records_the_composite_and_equals_eager(name, monkeypatch):
    fn = OPS[name][0]
    eager_calls = []
    for helper in ("_eager_softmax", "_eager_log_softmax"):
        original = getattr(softmax_family, helper)
        monkeypatch.setattr(softmax_family, helper,
                            lambda x, d, original=original: eager_calls.append(1) or original(x, d))

    def step(x):
        return (fn(x * 2, -1) ** 2).sum()

    a = np.random.default_rng(5).normal(0, 1, (4, 6)).astype(np.float32)
    results = []
    for run in (step, kiln.compile(step, backend="numpy")):
        eager_calls.clear()
        x = kiln.tensor(a, requires_grad=True)
        loss = run(x)
        loss.backward()
        results.append((loss.item(), x.grad.numpy(), len(eager_calls)))
    assert results[0][2] == 1 and results[1][2] == 0     # the trace took the composite
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- mean

MEAN_CASES = [(None, False), (-1, False), (1, True), ((0, 2), False), ((2, 0), True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dim,keepdim", MEAN_CASES)
def test_mean_fast_path_matches_torch(dtype, dim, keepdim):
    def fn(lib, x):
        return x.mean() if dim is None else x.mean(dim, keepdim=keepdim)
    check_op(fn, [(3, 4, 5)], dtype=dtype)


@pytest.mark.parametrize("dim,keepdim", MEAN_CASES)
@pytest.mark.parametrize("shape", [(3, 4, 5), (20, 30, 8)])
def test_mean_fast_path_is_the_composite_bitwise(dim, keepdim, shape, monkeypatch):
    a = np.random.default_rng(6).normal(0, 3, shape).astype(np.float32)
    runs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(reductions, "_eager_mean", lambda *args: None)
        x = kiln.tensor(a, requires_grad=True)
        y = x.mean() if dim is None else x.mean(dim, keepdim=keepdim)
        y.backward(kiln.tensor(np.random.default_rng(7).normal(0, 1, y.shape).astype(np.float32)))
        runs.append((y.detach().numpy(), x.grad.numpy(), y.grad_fn.name()))
    for fast_value, slow_value in zip(*runs):
        np.testing.assert_array_equal(fast_value, slow_value)


def test_mean_under_a_trace_is_the_composite(monkeypatch):
    calls = []
    original = reductions._eager_mean
    monkeypatch.setattr(reductions, "_eager_mean",
                        lambda *args: calls.append(original(*args)) or calls[-1])

    def step(x):
        return (x.mean(-1) ** 2).sum()

    a = np.random.default_rng(8).normal(0, 1, (4, 6)).astype(np.float32)
    results = []
    for run in (step, kiln.compile(step, backend="numpy")):
        calls.clear()
        x = kiln.tensor(a, requires_grad=True)
        loss = run(x)
        loss.backward()
        results.append((loss.item(), x.grad.numpy(), [r is not None for r in calls]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert results[0][2] == [True] and results[1][2] and not any(results[1][2])


# ----------------------------------------------------------------------------- sum of all

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16,), (3, 4, 5), (0, 3)])
def test_sum_fast_path_matches_torch(dtype, shape):
    check_op(lambda lib, x: x.sum(), [shape], dtype=dtype)
    check_op(lambda lib, x: lib.sum(x) * 2, [shape], dtype=dtype)


@pytest.mark.parametrize("shape", [(3, 4, 5), (70, 90)])
def test_sum_fast_path_is_the_dispatchers_bitwise(shape, monkeypatch):
    a = np.random.default_rng(9).normal(0, 3, shape).astype(np.float32)
    runs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(reductions, "_eager_ok", lambda x: False)
        x = kiln.tensor(a, requires_grad=True)
        y = x.sum()
        y.backward(kiln.tensor(np.float32(0.7)))
        runs.append((y.detach().numpy(), x.grad.numpy(), y.grad_fn.name()))
    for fast_value, slow_value in zip(*runs):
        np.testing.assert_array_equal(fast_value, slow_value)
    assert runs[0][2] == "SumBackward0"


def test_sum_of_a_stale_view_takes_its_new_history():
    for lib in (kiln, torch):
        x = lib.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
        base = x * 1
        view = base[1:]
        base.mul_(x)                    # view's history is stale: it now reads x * x
        view.sum().backward()
        if lib is kiln:
            got = x.grad.numpy()
        else:
            np.testing.assert_allclose(got, x.grad.numpy())


# ----------------------------------------------------------------------------- slice gradients

def _slicing_loss(lib, x, w, create_graph=False):
    """unbind, chunk, split, strided and overlapping slices of one tensor, and a gradient from
    a non-slice use of it that arrives first: all summed into its gradient."""
    y = x * w
    loss = (y.exp() * 0.1).sum()
    for i, part in enumerate(lib.unbind(y, 0)):
        loss = loss + (part * (i + 1)).sum()
    a, b, c = lib.chunk(y, 3, dim=2)
    loss = loss + (a ** 2).sum() + (c * b).sum()
    for i, part in enumerate(lib.split(y, [1, 2, 3], dim=0)):
        loss = loss + part.tanh().sum() * (i + 1)
    loss = loss + y[1:5, ::2].sum() + y[2:, :, 1:3].pow(2).sum() + y[:, -1, ::3].sum()
    return loss


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_slice_gradients_summed_in_one_buffer_match_torch(dtype):
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 4, 6)).astype(dtype)
    ws = rng.standard_normal((6, 4, 6)).astype(dtype)
    grads = []
    for lib in (torch, kiln):
        x = lib.tensor(xs, requires_grad=True)
        w = lib.tensor(ws, requires_grad=True)
        _slicing_loss(lib, x, w).backward()
        grads.append((x.grad.detach().numpy(), w.grad.detach().numpy()))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for k, t in zip(grads[1], grads[0]):
        np.testing.assert_allclose(k, t, rtol=tol, atol=tol)


def test_slice_gradients_in_place_equal_the_padded_rule_bitwise(monkeypatch):
    from kiln.tracer import autograd
    rng = np.random.default_rng(1)
    xs, ws = rng.standard_normal((2, 6, 4, 6)).astype(np.float32)

    def grads():
        x = kiln.tensor(xs, requires_grad=True)
        w = kiln.tensor(ws, requires_grad=True)
        loss = _slicing_loss(kiln, x, w)
        loss.backward(retain_graph=True)
        first = (x.grad.numpy().copy(), w.grad.numpy().copy())
        loss.backward()                   # the graph kept: the same gradients again
        return first, (x.grad.numpy() - first[0], w.grad.numpy() - first[1])
    added = []
    monkeypatch.setattr(autograd, "_add_slice_grad",
                        lambda *a, f=autograd._add_slice_grad: added.append(1) or f(*a))
    fast = grads()
    assert len(added) > 20
    monkeypatch.setattr(autograd, "_SLICE", None)       # every slice through its padded rule
    padded = grads()
    for f, p in zip(fast, padded):
        for a, b in zip(f, p):
            np.testing.assert_array_equal(a, b)


def test_second_order_through_slices_takes_the_differentiable_rule():
    rng = np.random.default_rng(2)
    xs, ws = rng.standard_normal((2, 6, 4, 6))
    out = []
    for lib in (torch, kiln):
        x = lib.tensor(xs, requires_grad=True)
        w = lib.tensor(ws, requires_grad=True)
        (gx,) = lib.autograd.grad(_slicing_loss(lib, x, w), x, create_graph=True)
        (gw,) = lib.autograd.grad((gx ** 2).sum(), w)
        out.append(gw.detach().numpy())
    np.testing.assert_allclose(out[1], out[0], rtol=1e-10, atol=1e-10)
