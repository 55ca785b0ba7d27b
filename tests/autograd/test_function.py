"""Custom autograd Functions, autograd.functional and the autograd facade, against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln


def _exp_function(lib):
    class Exp(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            y, = ctx.saved_tensors
            return g * y
    return Exp


def _linear_function(lib, seen):
    class Linear(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, scale):
            ctx.save_for_backward(x, w)
            ctx.scale = scale
            return (x @ w.t() + b) * scale

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            seen.append(tuple(ctx.needs_input_grad))
            gx = g @ w * ctx.scale if ctx.needs_input_grad[0] else None
            gw = (g.t() @ x) * ctx.scale if ctx.needs_input_grad[1] else None
            gb = g.sum(0) * ctx.scale if ctx.needs_input_grad[2] else None
            return gx, gw, gb, None
    return Linear


def _pair(shape, rng, requires_grad=True):
    a = rng.normal(size=shape)
    return (torch.tensor(a, requires_grad=requires_grad),
            kiln.tensor(a, requires_grad=requires_grad))


def test_custom_exp_matches_torch_values_and_gradients() -> None:
    rng = np.random.default_rng(0)
    xt, xk = _pair((3, 4), rng)
    yt, yk = _exp_function(torch).apply(xt), _exp_function(kiln).apply(xk)
    np.testing.assert_allclose(yk.detach().numpy(), yt.detach().numpy())
    (yt * yt).sum().backward()
    (yk * yk).sum().backward()
    np.testing.assert_allclose(xk.grad.numpy(), xt.grad.numpy(), rtol=1e-12)
    assert yk.grad_fn.name() == yt.grad_fn.name() == "ExpBackward"


@pytest.mark.parametrize("grads", [(True, True, True), (False, True, False), (True, False, True)])
def test_custom_linear_sees_needs_input_grad_like_torch(grads) -> None:
    rng = np.random.default_rng(1)
    pairs = [_pair(s, rng, r) for s, r in zip([(5, 3), (2, 3), (2,)], grads)]
    seen_t, seen_k = [], []
    yt = _linear_function(torch, seen_t).apply(*[p[0] for p in pairs], 0.5)
    yk = _linear_function(kiln, seen_k).apply(*[p[1] for p in pairs], 0.5)
    np.testing.assert_allclose(yk.detach().numpy(), yt.detach().numpy(), rtol=1e-12)
    yt.pow(2).sum().backward()
    yk.pow(2).sum().backward()
    assert seen_k == seen_t
    for (t, k) in pairs:
        if t.requires_grad:
            np.testing.assert_allclose(k.grad.numpy(), t.grad.numpy(), rtol=1e-12)
        else:
            assert k.grad is None


def test_several_outputs_non_differentiable_and_materialized_grads() -> None:
    def make(lib):
        class SortWithIndex(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                idx = x.argsort()
                ctx.mark_non_differentiable(idx)
                ctx.save_for_backward(idx)
                return x * 2, x * x, idx

            @staticmethod
            def backward(ctx, g_double, g_square, g_idx):
                return g_double * 2 + g_square * 0 + 1 * 0

        return SortWithIndex
    rng = np.random.default_rng(2)
    xt, xk = _pair((4,), rng)
    at, bt, it = make(torch).apply(xt)
    ak, bk, ik = make(kiln).apply(xk)
    assert not ik.requires_grad and not it.requires_grad
    (at.sum() + bt.sum()).backward()
    (ak.sum() + bk.sum()).backward()
    np.testing.assert_allclose(xk.grad.numpy(), xt.grad.numpy())


def test_wrong_number_of_gradients_is_a_clear_error() -> None:
    class Bad(kiln.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x * y

        @staticmethod
        def backward(ctx, g):
            return g
    x = kiln.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="incorrect number of gradients"):
        Bad.apply(x, x).sum().backward()


def test_extra_none_gradients_are_dropped_and_extra_tensors_refused_as_in_torch() -> None:
    for lib in (torch, kiln):
        class Scale(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x, factor=2.0):
                ctx.factor = factor
                return x * factor

            @staticmethod
            def backward(ctx, g):
                return g * ctx.factor, None, None      # more than the inputs: all None

        class TooMany(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 1

            @staticmethod
            def backward(ctx, g):
                return g, g
        x = lib.ones(2, requires_grad=True)
        Scale.apply(x).sum().backward()
        assert x.grad.tolist() == [2.0, 2.0]
        with pytest.raises(RuntimeError, match="incorrect number of gradients"):
            TooMany.apply(x).sum().backward()


def test_once_differentiable_and_double_backward_through_a_custom_function() -> None:
    from kiln.autograd.function import once_differentiable

    class Square(kiln.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return 2 * x * g
    x = kiln.tensor([1.0, 3.0], requires_grad=True)
    g, = kiln.autograd.grad(Square.apply(x).sum(), [x], create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), [2.0, 6.0])
    assert not g.requires_grad      # once_differentiable: no graph for the gradient

    class Cube(kiln.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return 3 * x * x * g
    y = Cube.apply(x).sum()
    g, = kiln.autograd.grad(y, [x], create_graph=True)
    gg, = kiln.autograd.grad(g.sum(), [x])
    np.testing.assert_allclose(gg.numpy(), [6.0, 18.0])


def test_custom_function_traces_under_compile() -> None:
    # its backward's ops go into the compiled backward (tests/test_compile_custom_function.py)
    Exp = _exp_function(kiln)

    @kiln.compile(fullgraph=True)
    def g(x):
        return Exp.apply(x * 2).sum()
    for values in ([0.1, 0.2], [0.3, -0.4]):
        x = kiln.tensor(values, requires_grad=True)
        g(x).backward()
        np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp(2 * np.array(values)),
                                   rtol=1e-6)


@pytest.mark.parametrize("name", ["jacobian", "hessian"])
def test_autograd_functional_matches_torch(name) -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3,))
    fn = (lambda lib: lambda x: (x.exp() * x.sin())) if name == "jacobian" else \
        (lambda lib: lambda x: (x.exp() * x.sin()).sum() + (x * x).prod())
    t = getattr(torch.autograd.functional, name)(fn(torch), torch.tensor(a))
    k = getattr(kiln.autograd.functional, name)(fn(kiln), kiln.tensor(a))
    np.testing.assert_allclose(k.numpy(), t.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["vjp", "jvp", "hvp"])
def test_autograd_vector_products_match_torch(name) -> None:
    rng = np.random.default_rng(4)
    a, v = rng.normal(size=(3,)), rng.normal(size=(3,))
    fn = (lambda x: (x.exp() * x.sin()).sum()) if name == "hvp" else (lambda x: x.exp() * x[0])
    t_out, t_vec = getattr(torch.autograd.functional, name)(fn, torch.tensor(a), torch.tensor(v))
    k_out, k_vec = getattr(kiln.autograd.functional, name)(fn, kiln.tensor(a), kiln.tensor(v))
    np.testing.assert_allclose(k_out.numpy(), t_out.numpy(), rtol=1e-12)
    np.testing.assert_allclose(k_vec.numpy(), t_vec.numpy(), rtol=1e-10)


def test_variable_anomaly_and_gradgradcheck_facade() -> None:
    x = kiln.autograd.Variable(kiln.ones(2), requires_grad=True)
    assert isinstance(x, kiln.Tensor) and x.requires_grad
    assert isinstance(kiln.ones(1), kiln.autograd.Variable)
    with kiln.autograd.detect_anomaly():
        assert kiln.is_anomaly_enabled()
    assert not kiln.is_anomaly_enabled()
    kiln.autograd.set_detect_anomaly(True)
    assert kiln.is_anomaly_enabled()
    kiln.autograd.set_detect_anomaly(False)
    z = kiln.tensor([0.3, 0.7], dtype=kiln.float64, requires_grad=True)
    assert kiln.autograd.gradgradcheck(lambda a: (a ** 3).sum(), (z,))


def test_gradgradcheck_draws_grad_outputs_and_checks_them_as_torch() -> None:
    """Random grad_outputs drawn as torch's (the generator ends where torch's does), the
    second derivative checked with respect to them too, torch's keywords accepted."""
    def functions(lib):
        class Square(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x ** 2

            @staticmethod
            def backward(ctx, g):
                x, = ctx.saved_tensors
                return g * 2 * x

        class DetachedGrad(Square):          # its gradient hides how it depends on g
            @staticmethod
            def backward(ctx, g):
                x, = ctx.saved_tensors
                return g.detach() * 2 * x
        return Square, DetachedGrad

    results = {}
    for lib in (torch, kiln):
        square, wrong = functions(lib)
        lib.manual_seed(3)
        x = lib.rand(2, 3, dtype=lib.float64, requires_grad=True)
        ok = lib.autograd.gradgradcheck(square.apply, x, check_grad_dtypes=True,
                                        check_batched_grad=False, nondet_tol=0.0)
        after = lib.rand(4).numpy()
        first_ok = lib.autograd.gradcheck(wrong.apply, x)
        second_ok = lib.autograd.gradgradcheck(wrong.apply, x, raise_exception=False)
        with pytest.raises(RuntimeError):    # GradcheckError is a RuntimeError in both
            lib.autograd.gradgradcheck(wrong.apply, x)
        results[lib.__name__] = (ok, after, first_ok, second_ok)
    t, k = results["torch"], results["kiln"]
    assert k[0] is t[0] is True
    np.testing.assert_array_equal(k[1], t[1])
    assert k[2] is t[2] is True and k[3] is t[3] is False


def test_post_accumulate_grad_hook_sees_the_accumulated_grad_like_torch() -> None:
    seen = {}
    for lib in (torch, kiln):
        w = lib.tensor([1.0, 2.0], requires_grad=True)
        calls = []
        handle = w.register_post_accumulate_grad_hook(lambda p: calls.append(p.grad.clone()))
        (w * w).sum().backward()
        (3 * w).sum().backward()
        handle.remove()
        (w * 5).sum().backward()
        seen[lib.__name__] = [c.tolist() for c in calls] + [w.grad.tolist()]
    assert seen["kiln"] == seen["torch"]


def test_an_in_place_op_on_a_custom_functions_output_backpropagates_like_torch():
    grads = []
    for lib in (torch, kiln):
        class Square(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return 2 * x * g
        x = lib.tensor([1.0, -2.0, 3.0], requires_grad=True)
        y = Square.apply(x)
        y.mul_(3).relu_()               # crashed: the node had no out_version
        (y * lib.tensor([1.0, 2.0, 3.0])).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[1], grads[0])


def test_walking_next_functions_reaches_the_leaves_as_in_torch():
    # torchviz-style: each leaf appears as one AccumulateGrad whose .variable is the leaf
    reached = []
    for lib in (torch, kiln):
        a = lib.ones(3, requires_grad=True)
        b = lib.ones(3, requires_grad=True)
        c = lib.ones(3)                           # no grad: a None entry
        y = ((a * b).sum() + (a * c).sum()).tanh()
        leaves, seen, stack = {}, set(), [y.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if hasattr(node, "variable"):
                leaves.setdefault(id(node.variable), set()).add(id(node))
            stack.extend(n for n, _ in node.next_functions)
        assert set(leaves) == {id(a), id(b)}
        reached.append(sorted(len(ids) for ids in leaves.values()))
    assert reached[1] == reached[0] == [1, 1]    # a reached twice, through one AccumulateGrad


def _split_function(lib, log, materialize):
    class Split(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, k, w):
            log.append(("needs_input_grad", ctx.needs_input_grad))
            ctx.set_materialize_grads(materialize)
            idx = (x > 0).long()
            ctx.mark_non_differentiable(idx)
            return x * 2, x * w, idx

        @staticmethod
        @lib.autograd.function.once_differentiable
        def backward(ctx, ga, gb, gi):
            log.append(("backward", lib.is_grad_enabled(),
                        [None if g is None else g.tolist() for g in (ga, gb, gi)]))
            gx = (0 if ga is None else ga * 2) + (0 if gb is None else gb * 3)
            return gx, None, None
    return Split


@pytest.mark.parametrize("materialize", [True, False])
def test_several_outputs_one_used_as_torchs(materialize):
    """needs_input_grad per argument, mark_non_differentiable (no grad_fn, a zero or None
    gradient given to backward), set_materialize_grads (zeros or None for the unused outputs),
    once_differentiable (backward under no_grad): the calls and gradients torch makes, when
    one output's gradient is asked for."""
    def run(lib):
        log = []
        x = lib.tensor([1.0, -2.0, 0.5], dtype=lib.float64, requires_grad=True)
        a, b, idx = _split_function(lib, log, materialize).apply(x, 5, lib.ones(3))
        log.append((idx.requires_grad, idx.grad_fn is None, b.grad_fn is not None))
        (a * lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64)).sum().backward()
        return log, x.grad.tolist()
    assert run(kiln) == run(torch)


def test_custom_function_post_hook_sees_what_backward_returned_as_torchs():
    """A custom Function's node hands its post hooks what backward returned for every tensor
    input, one that takes no gradient too (torch's quirk: next_functions lists None there)."""
    def run(lib):
        log = []

        class Mul(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x, k, w):
                ctx.save_for_backward(x, w)
                return x * w * k

            @staticmethod
            def backward(ctx, g):
                x, w = ctx.saved_tensors
                return g * w * 5, None, g * x * 5
        x = lib.tensor([1.0, -2.0], dtype=lib.float64, requires_grad=True)
        y = Mul.apply(x, 5, lib.tensor([3.0, 3.0], dtype=lib.float64))
        y.grad_fn.register_hook(lambda gi, go: log.append(
            [None if g is None else g.tolist() for g in gi + go]))
        y.sum().backward()
        return log, x.grad.tolist()
    assert run(kiln) == run(torch)
