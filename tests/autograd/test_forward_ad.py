"""kiln.autograd.forward_ad (dual tensors) against PyTorch's forward AD, torch.func.jvp and
finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as t_fwad

import kiln
import kiln.autograd.forward_ad as k_fwad

RNG = np.random.default_rng(1)
A = RNG.standard_normal((3, 4))
B = RNG.standard_normal((4, 5))
VA = RNG.standard_normal((3, 4))
VB = RNG.standard_normal((4, 5))
ROW = RNG.standard_normal(4)
TOL = dict(rtol=1e-10, atol=1e-12)

def _in_place(lib, a, b):
    h = a * 1
    h[1].mul_(3)                   # a write through a view: the base's history is rebuilt
    h.add_(b[:3, :4])
    return h.sin()


# each case: (lib, a, b) -> output, with a and b dual
CASES = {
    "in_place": _in_place,
    "elementwise": lambda lib, a, b: (a.sin() * a.exp() + a / (1 + a * a)).tanh(),
    "broadcast_constant": lambda lib, a, b: a * lib.tensor(ROW) - lib.tensor(ROW).cos(),
    "matmul": lambda lib, a, b: a @ b,
    "matmul_chain": lambda lib, a, b: (a @ b).relu() @ b.t(),
    "sum": lambda lib, a, b: a.sum(),
    "mean_dim": lambda lib, a, b: a.mean(dim=1, keepdim=True) * b.sum(),
    "max": lambda lib, a, b: a.amax(dim=0),
    "softmax": lambda lib, a, b: lib.softmax(a, dim=-1),
    "log_softmax_matmul": lambda lib, a, b: lib.log_softmax(a @ b, dim=0),
    "layer_norm": lambda lib, a, b: lib.nn.functional.layer_norm(a, (4,)),
    "views": lambda lib, a, b: a.t().reshape(2, 6)[:, 1:4].flip(0) * 2,
    "cat_pow": lambda lib, a, b: lib.cat([a, a ** 3], dim=0).sqrt().abs(),
    "norm": lambda lib, a, b: a.norm() + (a - a.mean()).pow(2).sum(),
}


def _tangent(lib, fwad, case):
    with fwad.dual_level():
        a = fwad.make_dual(lib.tensor(A), lib.tensor(VA))
        b = fwad.make_dual(lib.tensor(B), lib.tensor(VB))
        out = CASES[case](lib, a, b)
        primal, tangent = fwad.unpack_dual(out)
        return primal.detach().numpy().copy(), tangent.numpy().copy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_tangents_match_torch_forward_ad(case):
    k_primal, k_tangent = _tangent(kiln, k_fwad, case)
    t_primal, t_tangent = _tangent(torch, t_fwad, case)
    np.testing.assert_allclose(k_primal, t_primal, **TOL)
    np.testing.assert_allclose(k_tangent, t_tangent, **TOL)


def test_tangent_against_finite_differences():
    def f(lib, a, b):
        return ((a @ b).tanh() * (a @ b).sigmoid()).logsumexp(dim=1)

    _, tangent = (lambda: None, None)
    with k_fwad.dual_level():
        a = k_fwad.make_dual(kiln.tensor(A), kiln.tensor(VA))
        b = k_fwad.make_dual(kiln.tensor(B), kiln.tensor(VB))
        tangent = k_fwad.unpack_dual(f(kiln, a, b)).tangent.numpy()
    eps = 1e-6
    plus = f(kiln, kiln.tensor(A + eps * VA), kiln.tensor(B + eps * VB)).numpy()
    minus = f(kiln, kiln.tensor(A - eps * VA), kiln.tensor(B - eps * VB)).numpy()
    np.testing.assert_allclose(tangent, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)


def _mlp(lib):
    gen = np.random.default_rng(2)
    model = lib.nn.Sequential(lib.nn.Linear(4, 8), lib.nn.Tanh(), lib.nn.Linear(8, 3)).double()
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(gen.standard_normal(tuple(p.shape))))
    return model


def _param_tangents(lib, model):
    gen = np.random.default_rng(3)
    return {name: lib.tensor(gen.standard_normal(tuple(p.shape)))
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("how", ["setattr", "functional_call"])
def test_mlp_parameter_tangents_match_torch_and_func_jvp(how):
    results = {}
    for lib, fwad in ((kiln, k_fwad), (torch, t_fwad)):
        model = _mlp(lib)
        tangents = _param_tangents(lib, model)
        params = dict(model.named_parameters())
        x = lib.tensor(A)
        with fwad.dual_level():
            duals = {name: fwad.make_dual(p, tangents[name]) for name, p in params.items()}
            if how == "setattr":
                for name, d in duals.items():
                    module, attr = model, name
                    while "." in attr:
                        head, attr = attr.split(".", 1)
                        module = getattr(module, head)
                    delattr(module, attr)
                    setattr(module, attr, d)
                out = model(x)
            else:
                out = lib.func.functional_call(model, duals, (x,))
            results[lib.__name__] = fwad.unpack_dual(out).tangent.detach().numpy().copy()
        # the same directional derivative by torch.func.jvp / kiln.func.jvp
        fresh = _mlp(lib)
        names = list(tangents)

        def f(*ps):
            return lib.func.functional_call(fresh, dict(zip(names, ps)), (x,))
        _, jvp_out = lib.func.jvp(f, tuple(dict(fresh.named_parameters()).values()),
                                  tuple(tangents[n] for n in names))
        results[lib.__name__ + ".func"] = jvp_out.detach().numpy()
    for key in ("torch", "kiln.func", "torch.func"):
        np.testing.assert_allclose(results["kiln"], results[key], **TOL)


def _exp_with_jvp(lib, calls):
    class Exp(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            result = x.exp()
            ctx.result = result
            ctx.save_for_backward(result)
            return result

        @staticmethod
        def backward(ctx, g):
            result, = ctx.saved_tensors
            return g * result

        @staticmethod
        def jvp(ctx, g_in):
            calls.append("jvp")
            g_out = g_in * ctx.result
            del ctx.result
            return g_out
    return Exp


def _scale_without_jvp(lib, once=False):
    def backward(ctx, g):
        return g * 3 * ctx.mask, None

    class Scale(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, mask):
            ctx.mask = mask
            return x * 3 * mask

    Scale.backward = staticmethod(lib.autograd.function.once_differentiable(backward)
                                  if once else backward)
    return Scale


def test_custom_function_jvp_is_called_and_composes():
    results = []
    for lib, fwad in ((kiln, k_fwad), (torch, t_fwad)):
        calls = []
        Exp = _exp_with_jvp(lib, calls)
        primal = lib.tensor(A, requires_grad=True)
        with fwad.dual_level():
            dual = fwad.make_dual(primal, lib.tensor(VA))
            out = Exp.apply(dual.sin()).cos()
            assert calls == ["jvp"]                 # at apply time, before any unpack
            tangent = fwad.unpack_dual(out).tangent
        out.sum().backward()                        # the ordinary backward still works
        results.append((tangent.detach().numpy().copy(), primal.grad.numpy().copy()))
    np.testing.assert_allclose(results[0][0], results[1][0], **TOL)
    np.testing.assert_allclose(results[0][1], results[1][1], **TOL)
    s = np.sin(A)
    np.testing.assert_allclose(results[0][0], -np.sin(np.exp(s)) * np.exp(s) * np.cos(A) * VA,
                               **TOL)


def test_custom_function_without_jvp_derives_the_tangent_from_backward():
    mask = (A > 0).astype(np.float64)
    Scale = _scale_without_jvp(kiln)
    with k_fwad.dual_level():
        dual = k_fwad.make_dual(kiln.tensor(A), kiln.tensor(VA))
        tangent = k_fwad.unpack_dual(Scale.apply(dual, kiln.tensor(mask)).sin()).tangent
    np.testing.assert_allclose(tangent.numpy(), np.cos(3 * A * mask) * 3 * mask * VA, **TOL)
    # torch requires a jvp here; kiln's choice is documented in kiln.autograd.forward_ad
    TScale = _scale_without_jvp(torch)
    with t_fwad.dual_level():
        dual = t_fwad.make_dual(torch.tensor(A), torch.tensor(VA))
        with pytest.raises(NotImplementedError, match="jvp"):
            TScale.apply(dual, torch.tensor(mask))


def test_custom_function_with_a_non_differentiable_backward_asks_for_a_jvp():
    Scale = _scale_without_jvp(kiln, once=True)
    with k_fwad.dual_level():
        dual = k_fwad.make_dual(kiln.tensor(A), kiln.tensor(VA))
        out = Scale.apply(dual, kiln.tensor(np.ones_like(A)))
        with pytest.raises(RuntimeError, match="Scale.*not differentiable.*jvp staticmethod"):
            k_fwad.unpack_dual(out)


@pytest.mark.parametrize("lib,fwad", [(kiln, k_fwad), (torch, t_fwad)], ids=["kiln", "torch"])
def test_tangents_none_where_no_dual_and_dropped_at_exit(lib, fwad):
    plain = lib.tensor(B)
    with fwad.dual_level():
        dual = fwad.make_dual(lib.tensor(A), lib.tensor(VA))
        out = dual @ plain
        assert fwad.unpack_dual(plain).tangent is None
        assert fwad.unpack_dual(plain * 2).tangent is None
        assert fwad.unpack_dual(dual.argmax()).tangent is None    # integer: no tangent
        primal, tangent = fwad.unpack_dual(out)
        np.testing.assert_allclose(tangent.numpy(), VA @ B, **TOL)
        assert fwad.unpack_dual(primal).tangent is None           # the primal carries none
        assert not primal.requires_grad
        np.testing.assert_allclose(primal.numpy(), A @ B, **TOL)
        assert type(fwad.unpack_dual(out)).__name__ == "UnpackedDualTensor"
    assert fwad.unpack_dual(out).tangent is None
    assert fwad.unpack_dual(dual).tangent is None
    assert fwad.unpack_dual(3.0).tangent is None
    with fwad.dual_level():                      # a new level knows nothing of the old one
        assert fwad.unpack_dual(out).tangent is None
        assert fwad.unpack_dual(dual * 2).tangent is None


@pytest.mark.parametrize("lib,fwad", [(kiln, k_fwad), (torch, t_fwad)], ids=["kiln", "torch"])
def test_errors(lib, fwad):
    x, v = lib.tensor(A), lib.tensor(VA)
    with pytest.raises(RuntimeError, match="no level exists"):
        fwad.make_dual(x, v)
    with fwad.dual_level():
        with pytest.raises(RuntimeError, match=r"size \[3, 4\].*size \[4\]"):
            fwad.make_dual(x, lib.tensor(ROW))
        with pytest.raises(ValueError, match="floating point"):
            fwad.make_dual(lib.arange(3), lib.arange(3))
        with pytest.raises(RuntimeError, match="Nested forward mode AD"):
            fwad.enter_dual_level()
        dual = fwad.make_dual(x, v)
        with pytest.raises(RuntimeError, match="already has a forward gradient"):
            fwad.make_dual(dual, v)
        with pytest.raises(RuntimeError, match="not the last one"):
            fwad.exit_dual_level(level=5)
    level = fwad.enter_dual_level()
    assert level == 0
    fwad.exit_dual_level(level=level)


def test_requires_grad_of_duals_and_backward_to_real_parameters():
    # a primal that requires grad: the dual and its results require grad as in torch, and
    # backward reaches the primal; a primal that does not: kiln's results require grad (they
    # carry the history the tangent needs) but backward reaches nothing of the user's
    results = []
    for lib, fwad in ((kiln, k_fwad), (torch, t_fwad)):
        w = lib.tensor(B, requires_grad=True)
        x = lib.tensor(A)
        with fwad.dual_level():
            wd = fwad.make_dual(w, lib.tensor(VB))
            xd = fwad.make_dual(x, lib.tensor(VA))
            loss = (xd @ wd).sin().sum()
            assert wd.requires_grad and loss.requires_grad
            tangent = fwad.unpack_dual(loss).tangent
            primal = fwad.unpack_dual(loss).primal
            assert primal.requires_grad
            assert fwad.unpack_dual(primal).tangent is None
            assert fwad.unpack_dual(primal * 2).tangent is None
            loss.backward()
            assert x.grad is None and not x.requires_grad
        results.append((float(tangent.detach()), w.grad.numpy().copy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-10)
    np.testing.assert_allclose(results[0][1], results[1][1], **TOL)
    with k_fwad.dual_level():
        xd = k_fwad.make_dual(kiln.tensor(A), kiln.tensor(VA))
        assert not k_fwad.unpack_dual(xd.sin()).primal.requires_grad


def test_tangent_asked_after_backward_freed_the_graph_is_an_error():
    w = kiln.tensor(B, requires_grad=True)
    with k_fwad.dual_level():
        wd = k_fwad.make_dual(w, kiln.tensor(VB))
        loss = (kiln.tensor(A) @ wd).sin().sum()
        loss.backward()
        with pytest.raises(RuntimeError, match="freed by a backward pass.*unpack_dual before"):
            k_fwad.unpack_dual(loss)


def test_tangents_are_cached_per_node():
    with k_fwad.dual_level():
        dual = k_fwad.make_dual(kiln.tensor(A), kiln.tensor(VA))
        out = dual.sin().exp()
        first = k_fwad.unpack_dual(out).tangent
        assert k_fwad.unpack_dual(out).tangent is first
        np.testing.assert_allclose(first.numpy(), np.exp(np.sin(A)) * np.cos(A) * VA, **TOL)


def test_dual_level_works_as_a_decorator_and_gradcheck_checks_forward_ad():
    Exp = _exp_with_jvp(kiln, [])

    @k_fwad.dual_level()
    def tangent_of_exp(x, v):
        return k_fwad.unpack_dual(Exp.apply(k_fwad.make_dual(x, v))).tangent

    np.testing.assert_allclose(tangent_of_exp(kiln.tensor(A), kiln.tensor(VA)).numpy(),
                               np.exp(A) * VA, **TOL)
    primal = kiln.tensor(A, requires_grad=True)
    assert kiln.autograd.gradcheck(Exp.apply, (primal,), check_forward_ad=True,
                                   check_backward_ad=False, check_undefined_grad=False,
                                   check_batched_grad=False)

    class WrongJvp(kiln.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.exp()

        @staticmethod
        def backward(ctx, g):
            return g

        @staticmethod
        def jvp(ctx, g):
            return g * 2

    with pytest.raises(kiln.autograd.GradcheckError, match="forward"):
        kiln.autograd.gradcheck(WrongJvp.apply, (primal,), check_forward_ad=True,
                                check_backward_ad=False)


def test_compiled_functions_run_eagerly_under_forward_ad():
    import warnings
    w = kiln.tensor(B)

    @kiln.compile
    def f(x):
        return (x @ w).tanh()

    f(kiln.tensor(A))                                   # compiled outside the level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with k_fwad.dual_level():
            tangents = [k_fwad.unpack_dual(f(k_fwad.make_dual(kiln.tensor(A),
                                                              kiln.tensor(VA)))).tangent
                        for _ in range(3)]

        @kiln.compile
        def g(x, v):
            with k_fwad.dual_level():
                return k_fwad.unpack_dual((k_fwad.make_dual(x, v) @ w).tanh()).tangent
        inside = [g(kiln.tensor(A), kiln.tensor(VA)) for _ in range(2)]
    expected = (1 - np.tanh(A @ B) ** 2) * (VA @ B)
    for t in tangents + inside:
        np.testing.assert_allclose(t.numpy(), expected, **TOL)
    messages = [str(c.message) for c in caught]
    assert any("f is called inside a forward AD dual_level" in m for m in messages)
    assert any("graph break in" in m and "forward AD (dual_level)" in m for m in messages)


def test_save_for_forward_tensors_are_what_jvp_reads_and_backward_reads_its_own():
    """ctx.save_for_forward (setup_context style): jvp sees those tensors as saved_tensors,
    backward the save_for_backward ones; the tangent and the gradient agree with torch's."""
    results = {}
    for lib, fwad in ((torch, t_fwad), (kiln, k_fwad)):
        class ScaledExp(lib.autograd.Function):
            # jvp's saved tensor is 2x, backward's is x: each reads its own
            @staticmethod
            def forward(x):
                return x.exp()

            @staticmethod
            def setup_context(ctx, inputs, output):
                x, = inputs
                ctx.save_for_backward(output, x)
                ctx.save_for_forward(output * 2)

            @staticmethod
            def backward(ctx, g):
                result, x = ctx.saved_tensors
                return g * result

            @staticmethod
            def jvp(ctx, x_t):
                doubled, = ctx.saved_tensors
                return x_t * doubled
        x = lib.tensor(A, requires_grad=True)
        with fwad.dual_level():
            out = ScaledExp.apply(fwad.make_dual(x, lib.tensor(VA)))
            tangent = fwad.unpack_dual(out).tangent.detach().numpy().copy()
            out.sum().backward()
        results[lib.__name__] = tangent, x.grad.numpy().copy()
    np.testing.assert_allclose(results["kiln"][0], 2 * np.exp(A) * VA, **TOL)
    np.testing.assert_allclose(results["kiln"][1], np.exp(A), **TOL)
    for k, t in zip(results["kiln"], results["torch"]):
        np.testing.assert_allclose(k, t, **TOL)
