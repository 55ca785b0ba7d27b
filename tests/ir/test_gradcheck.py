"""Finite-difference checks (float64) of every differentiable primitive's gradient rule.

`CASES` maps each primitive with a gradient rule to calls that exercise it (broadcasting,
Python-number operands, every attribute form). `test_every_differentiable_primitive_has_a_case`
walks the registry, so a new primitive with a gradient rule and no case here fails the suite.
"""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.ir.ops import PRIMITIVES, P


from tests.ir.gradcheck_helpers import arg, index, pos  # noqa: E402


# each case: (description, function of the inputs, inputs)
CASES = {
    "neg": [("", lambda x: P.neg(x), [arg(2, 3)])],
    "abs": [("", lambda x: P.abs(x), [arg(2, 3)])],
    "sign": [("", lambda x: P.sign(x), [arg(4)])],
    "relu": [("", lambda x: P.relu(x), [arg(2, 3)])],
    "exp": [("", lambda x: P.exp(x), [arg(2, 3)])],
    "log": [("", lambda x: P.log(x), [pos(2, 3)])],
    "log1p": [("", lambda x: P.log1p(x), [arg(5, low=-0.8)])],
    "expm1": [("", lambda x: P.expm1(x), [arg(5)])],
    "sqrt": [("", lambda x: P.sqrt(x), [pos(2, 3)])],
    "sin": [("", lambda x: P.sin(x), [arg(5)])],
    "cos": [("", lambda x: P.cos(x), [arg(5)])],
    "tan": [("", lambda x: P.tan(x), [arg(5, low=-1.2, high=1.2)])],
    "tanh": [("", lambda x: P.tanh(x), [arg(5)])],
    "sigmoid": [("", lambda x: P.sigmoid(x), [arg(5)])],
    "erf": [("", lambda x: P.erf(x), [arg(5)])],
    "floor": [("", lambda x: P.floor(x), [arg(5, away_from_int=True)])],
    "ceil": [("", lambda x: P.ceil(x), [arg(5, away_from_int=True)])],
    "trunc": [("", lambda x: P.trunc(x), [arg(5, away_from_int=True)])],
    "round": [("", lambda x: P.round(x), [arg(5, away_from_int=True)]),
              ("decimals", lambda x: P.round(x, decimals=0), [arg(3, away_from_int=True)])],
    "add": [("broadcast", lambda x, y: P.add(x, y), [arg(2, 3), arg(3, seed=1)]),
            ("literal", lambda x: P.add(x, 1.5), [arg(2)])],
    "sub": [("broadcast", lambda x, y: P.sub(x, y), [arg(2, 1), arg(1, 3, seed=1)]),
            ("literal first", lambda x: P.sub(2.0, x), [arg(3)])],
    "mul": [("broadcast", lambda x, y: P.mul(x, y), [arg(2, 3), arg(2, 1, seed=1)]),
            ("literal", lambda x: P.mul(x, -0.5), [arg(3)])],
    "div": [("broadcast", lambda x, y: P.div(x, y), [arg(2, 3), pos(3, seed=1)]),
            ("literal numerator", lambda x: P.div(1.0, x), [pos(3)])],
    "mod": [("", lambda x, y: P.mod(x, y), [arg(4, away_from_int=True), arg(4, low=1.0, high=1.0)
                                           .detach().requires_grad_()]),
            ("literal", lambda x: P.mod(x, 1.0), [arg(4, away_from_int=True)])],
    "pow": [("tensor ** tensor", lambda x, y: P.pow(x, y), [pos(2, 3), arg(3, seed=1)]),
            ("tensor ** literal", lambda x: P.pow(x, 3.0), [arg(4)]),
            ("tensor ** 0", lambda x: P.pow(x, 0.0), [arg(4)]),
            ("literal ** tensor", lambda y: P.pow(2.0, y), [arg(4)])],
    "maximum": [("broadcast", lambda x, y: P.maximum(x, y), [arg(2, 3), arg(3, seed=1)])],
    "minimum": [("broadcast", lambda x, y: P.minimum(x, y), [arg(2, 3), arg(3, seed=1)])],
    "where": [("broadcast", lambda x, y: P.where(P.gt(x, 0), x, y), [arg(2, 3), arg(3, seed=1)]),
              ("literal", lambda x: P.where(P.gt(x, 0), x, 0.0), [arg(5)])],
    "cast": [("float64 -> float64", lambda x: P.cast(x, dtype=kiln.float64), [arg(3)])],
    "sum": [("some axes", lambda x: P.sum(x, axes=(0, 2), keepdim=False), [arg(2, 3, 2)]),
            ("keepdim", lambda x: P.sum(x, axes=(1,), keepdim=True), [arg(2, 3)])],
    "max": [("", lambda x: P.max(x, axes=(1,), keepdim=False), [arg(3, 4)]),
            ("keepdim, all axes", lambda x: P.max(x, axes=(0, 1), keepdim=True), [arg(2, 3)])],
    "prod": [("", lambda x: P.prod(x, axes=(1,), keepdim=False), [arg(3, 4)]),
             ("with a zero", lambda x: P.prod(P.mul(x, kiln.tensor(
                 [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=kiln.float64)), axes=(1,),
                 keepdim=True), [arg(2, 3)])],
    "cumsum": [("", lambda x: P.cumsum(x, axis=1), [arg(2, 4)])],
    "reshape": [("", lambda x: P.reshape(x, shape=(3, 2)), [arg(2, 3)])],
    "permute": [("", lambda x: P.permute(x, perm=(2, 0, 1)), [arg(2, 3, 2)])],
    "expand": [("", lambda x: P.expand(x, shape=(2, 3, 4)), [arg(3, 1)])],
    "slice": [("contiguous", lambda x: P.slice(x, starts=(1, 0), stops=(3, 2), steps=(1, 1)),
               [arg(3, 4)]),
              ("strided", lambda x: P.slice(x, starts=(0, 1), stops=(3, 4), steps=(2, 2)),
               [arg(3, 4)])],
    "flip": [("", lambda x: P.flip(x, axes=(0, 1)), [arg(2, 3)])],
    "unfold_dim": [("overlapping", lambda x: P.unfold_dim(x, axis=1, size=3, step=1),
                    [arg(2, 6, 2)]),
                   ("step past size", lambda x: P.unfold_dim(x, axis=0, size=2, step=3),
                    [arg(8, 2)])],
    "as_strided": [("overlapping", lambda x: P.as_strided(x, size=(3, 3), stride=(1, 1),
                                                          offset=1), [arg(2, 3)]),
                   ("skipping", lambda x: P.as_strided(x, size=(2, 2), stride=(3, 2),
                                                       offset=0), [arg(6)])],
    "pad": [("", lambda x: P.pad(x, pads=((1, 0), (2, 1)), value=0.5), [arg(2, 3)])],
    "cat": [("", lambda x, y, z: P.cat(x, y, z, axis=1), [arg(2, 1), arg(2, 3, seed=1),
                                                         arg(2, 2, seed=2)])],
    "check_values": [("passes the values through", lambda x: P.check_values(
        x, P.ge(P.abs(x), 0), op="demo", kind="ValueError", message="{}"), [arg(2, 3)])],
    "take": [("repeats", lambda x: P.take(x, index(2, 0, 2), axis=1), [arg(2, 3)]),
             ("2-d index", lambda x: P.take(x, kiln.tensor([[0, 1], [1, 1]]), axis=0),
              [arg(2, 3)])],
    "index_add": [("duplicates", lambda b, s: P.index_add(b, index(0, 2, 0), s, axis=0),
                   [arg(3, 2), arg(3, 2, seed=1)])],
    "index_put": [("", lambda b, s: P.index_put(b, index(2, 0), s, axis=1),
                   [arg(2, 3), arg(2, 2, seed=1)])],
    "unfold": [("strided, dilated", lambda x: P.unfold(x, kernel=(3, 2), stride=(2, 1),
                                                        dilation=(1, 2)), [arg(2, 3, 7, 6)]),
               ("1x1", lambda x: P.unfold(x, kernel=(1, 1), stride=(1, 1), dilation=(1, 1)),
                [arg(1, 2, 3, 3)])],
    "fold": [("overlapping windows", lambda c: P.fold(c, size=(5, 4), kernel=(3, 2),
                                                      stride=(1, 1), dilation=(1, 1)),
              [arg(2, 3, 3, 3, 2, 2)]),
             ("strided, dilated", lambda c: P.fold(c, size=(7, 6), kernel=(3, 2), stride=(2, 1),
                                                   dilation=(1, 2)), [arg(1, 3, 4, 3, 2, 2)])],
    # a convolution's products (x: 2 images of 3 channels, 7x6; windows 3x2, stride (2, 1),
    # dilation (1, 2): 3x4 positions, so 24 rows of 18)
    "unfold_matmul": [("strided, dilated", lambda x, w: P.unfold_matmul(
        x, w, kernel=(3, 2), stride=(2, 1), dilation=(1, 2)), [arg(2, 3, 7, 6), arg(18, 4)])],
    "matmul_unfold": [("strided, dilated", lambda a, x: P.matmul_unfold(
        a, x, kernel=(3, 2), stride=(2, 1), dilation=(1, 2)), [arg(4, 24), arg(2, 3, 7, 6)])],
    "matmul_fold": [("strided, dilated", lambda a, b: P.matmul_fold(
        a, b, size=(7, 6), kernel=(3, 2), stride=(2, 1), dilation=(1, 2)),
        [arg(24, 4), arg(4, 18)]),
        ("channels-last", lambda a, b: P.matmul_fold(
            a, b, size=(7, 6), kernel=(3, 2), stride=(2, 1), dilation=(1, 2),
            channels_last=True), [arg(24, 4), arg(4, 18)])],
    "batch_norm": [("4-d", lambda x: P.batch_norm(x, eps=1e-5), [arg(3, 2, 2, 2)]),
                   ("2-d", lambda x: P.batch_norm(x, eps=0.1), [arg(4, 3)])],
    "batch_norm_backward": [("", lambda g, o, x: P.batch_norm_backward(g, o, x, eps=1e-5),
                             [arg(3, 2, 2), arg(3, 2, 2, seed=1), arg(3, 2, 2, seed=2)])],
    "matmul": [("2-d", lambda a, b: P.matmul(a, b), [arg(2, 3), arg(3, 4, seed=1)]),
               ("batched", lambda a, b: P.matmul(a, b), [arg(2, 2, 3), arg(2, 3, 1, seed=1)]),
               ("one side needs grad", lambda a: P.matmul(a, kiln.ones(3, 2, dtype=kiln.float64)),
                [arg(2, 3)])],
}

from tests.ir.gradcheck_cases_extra import CASES_EXTRA  # noqa: E402
from tests.ir.gradcheck_cases_complex import CASES_COMPLEX  # noqa: E402
CASES.update(CASES_EXTRA)
CASES.update(CASES_COMPLEX)

PARAMS = [pytest.param(name, fn, inputs, id=f"{name}-{desc}" if desc else name)
          for name, cases in CASES.items() for desc, fn, inputs in cases]


@pytest.mark.parametrize("name,fn,inputs", PARAMS)
def test_gradient_rule_matches_finite_differences(name, fn, inputs) -> None:
    assert kiln.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# second derivatives: the rules are written with tensor ops, so they differentiate again
SECOND_ORDER = ["exp", "log", "sqrt", "sin", "cos", "tan", "tanh", "sigmoid", "erf", "mul", "div",
                "pow", "sum", "max", "prod", "matmul", "expand", "slice", "take", "cumsum", "unfold",
                "batch_norm", "unfold_matmul", "matmul_unfold", "matmul_fold",
                "linalg_matrix_exp"]


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_gradient_of_gradient_matches_finite_differences(name) -> None:
    desc, fn, inputs = CASES[name][0]

    def first_grads(*xs):
        with kiln.enable_grad():     # gradcheck perturbs inputs under no_grad
            out = fn(*xs)
            seed = kiln.tensor(np.linspace(0.5, 1.5, out.numel()).reshape(tuple(out.shape)),
                               dtype=kiln.float64)
            return tuple(kiln.autograd.grad([out], list(xs), [seed], create_graph=True))
    fresh = [x.detach().requires_grad_() for x in inputs]
    assert kiln.autograd.gradcheck(first_grads, fresh, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_every_differentiable_primitive_has_a_case() -> None:
    differentiable = {name for name, prim in PRIMITIVES.items() if prim.grad is not None}
    missing = sorted(differentiable - set(CASES))
    assert not missing, f"primitives with a gradient rule but no gradcheck case: {missing}"
    stale = sorted(set(CASES) - differentiable)
    assert not stale, f"gradcheck cases for primitives that are gone or not differentiable: " \
                      f"{stale}"


def test_gradcheck_catches_a_wrong_rule(monkeypatch) -> None:
    prim = PRIMITIVES["sin"]
    wrong = type(prim)(**{**prim.__dict__, "grad": lambda g, out, x: (g * P.sin(x),)})
    monkeypatch.setitem(PRIMITIVES, "sin", wrong)
    monkeypatch.setattr(P, "sin", lambda *args, **attrs: P.dispatch(wrong, args, attrs))
    with pytest.raises(kiln.autograd.GradcheckError):
        kiln.autograd.gradcheck(lambda x: P.sin(x), [arg(3)])
