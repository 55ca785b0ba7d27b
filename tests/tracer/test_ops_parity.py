"""Every public op against PyTorch: values, dtypes, shapes and gradients, over hypothesis shapes.

One table of cases drives the suite. A case names the op, says how to call it on either
library (`fn(lib, *tensors, **params)`, where `lib` is `torch` or `kiln`) and how hypothesis
draws its inputs (`draw(data, dtype) -> (inputs, params)`); `check_op` does the comparing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import kiln
import kiln.tracer.functional as kiln_functional
from tests.parity import check_op
from tests.strategies import broadcastable, dim_of, dims_of, permutation_of, seeds, shapes

FLOATS = (np.float32, np.float64)
INTS = (np.int64, np.int32)
EXAMPLES = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def nnf(lib):
    """`torch.nn.functional`, or kiln's functional ops (the same names)."""
    return torch.nn.functional if lib is torch else kiln_functional


# ----------------------------------------------------------------------------- input drawing

def values(data, shape, dtype, kind="any"):
    """A NumPy array of `shape`; `kind` picks a domain that keeps the op finite and smooth."""
    rng = np.random.default_rng(data.draw(seeds))
    if dtype == np.bool_ or kind == "bool":
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.integer):
        lo, hi = {"pos": (1, 4), "nonzero": (1, 4)}.get(kind, (-3, 3))
        a = rng.integers(lo, hi + 1, size=shape)
        if kind == "nonzero":
            a = a * rng.choice([-1, 1], size=shape)
        return a.astype(dtype)
    if kind == "pos":
        a = rng.uniform(0.3, 2.0, size=shape)
    elif kind == "nonzero":
        a = rng.uniform(0.3, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    elif kind == "ties":      # integer-valued: equal elements and zeros occur
        a = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif kind == "unit":
        a = rng.uniform(-0.9, 0.9, size=shape)
    elif kind == "special":   # nan, +-inf and ordinary numbers
        a = rng.choice([np.nan, np.inf, -np.inf, 1.5, -0.5, 0.0, 1e39, -3.0], size=shape)
    else:
        a = rng.uniform(-2.0, 2.0, size=shape)
    with np.errstate(over="ignore"):
        return np.asarray(a).astype(dtype)


def one(kind="any", min_dims=0, max_dims=3, min_side=0):
    def draw(data, dtype):
        return [values(data, data.draw(shapes(min_dims, max_dims, min_side)), dtype, kind)], {}
    return draw


def many(*kinds, min_side=0):
    """Inputs of mutually broadcastable shapes, one per kind."""
    def draw(data, dtype):
        ss = data.draw(broadcastable(len(kinds), min_side=min_side))
        return [values(data, s, dtype if k != "bool" else np.bool_, k)
                for s, k in zip(ss, kinds)], {}
    return draw


def reduced(kind="any", min_side=0, multi=True, dim_required=False, min_dims=0):
    """One input plus `dim` (None, an int or a tuple when `multi`) and `keepdim`."""
    def draw(data, dtype):
        shape = data.draw(shapes(min_dims=min_dims, min_side=min_side))
        if multi:
            dim = data.draw(dims_of(shape).filter(lambda d: d is not None or not dim_required))
        else:
            dim = data.draw(dim_of(shape) if dim_required else
                            st.one_of(st.none(), dim_of(shape)))
        return [values(data, shape, dtype, kind)], {"dim": dim, "keepdim": data.draw(st.booleans())}
    return draw


def along(kind="any", min_dims=1, min_side=0, **extra):
    """One input and one valid `dim`; `extra` strategies are drawn into params as well."""
    def draw(data, dtype):
        shape = data.draw(shapes(min_dims=min_dims, min_side=min_side))
        params = {"dim": data.draw(dim_of(shape))}
        params.update({k: data.draw(s) for k, s in extra.items()})
        return [values(data, shape, dtype, kind)], params
    return draw


def fixed(*specs):
    """Inputs of fixed shapes: `(shape, kind)` pairs, or arrays (index tensors) as they are."""
    def draw(data, dtype):
        return [values(data, s[0], dtype, s[1]) if isinstance(s, tuple) else s
                for s in specs], {}
    return draw


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable
    draw: Callable
    dtypes: tuple = FLOATS
    grad: bool = True
    atol: float | None = None
    rtol: float | None = None


CASES: list[Case] = []


def case(name, fn, draw=None, **kw):
    CASES.append(Case(name, fn, draw or one(), **kw))


# elementwise unary, with the domain each needs
for _name, _kind in [("neg", "any"), ("abs", "nonzero"), ("exp", "any"), ("exp2", "any"),
                     ("log", "pos"), ("log2", "pos"), ("log10", "pos"), ("log1p", "unit"),
                     ("expm1", "any"), ("sqrt", "pos"), ("rsqrt", "pos"), ("sin", "any"),
                     ("cos", "any"), ("tan", "unit"), ("tanh", "any"), ("sigmoid", "any"),
                     ("erf", "any"), ("relu", "nonzero"), ("sign", "nonzero"),
                     ("floor", "any"), ("ceil", "any"), ("round", "any"), ("trunc", "any"),
                     ("frac", "any"), ("reciprocal", "nonzero"), ("square", "any")]:
    case(_name, (lambda n: lambda lib, x: getattr(lib, n)(x))(_name), one(_kind))
case("neg_operator", lambda lib, x: -x)
case("abs_method", lambda lib, x: x.abs(), one("nonzero"))
case("round_decimals", lambda lib, x: lib.round(x, decimals=2), atol=1e-2)
for _name, _kw, _kind in [("gelu", {}, "any"), ("gelu", {"approximate": "tanh"}, "any"),
                          ("silu", {}, "any"), ("softplus", {}, "any"),
                          ("softplus", {"beta": 2.0, "threshold": 1.0}, "nonzero"),
                          ("leaky_relu", {"negative_slope": 0.2}, "nonzero"),
                          ("elu", {"alpha": 0.7}, "nonzero"), ("mish", {}, "any"),
                          ("hardtanh", {}, "nonzero"), ("relu6", {}, "nonzero"),
                          ("logsigmoid", {}, "any"), ("hardsigmoid", {}, "nonzero"),
                          ("hardswish", {}, "nonzero"), ("softsign", {}, "any")]:
    # (atol: torch's hardsigmoid backward multiplies by a float32 1/6, even in float64)
    case(f"F.{_name}{_kw or ''}", (lambda n, kw: lambda lib, x: getattr(nnf(lib), n)(x, **kw))(
        _name, _kw), one(_kind), atol=1e-8 if _name.startswith("hard") else None)
case("clamp", lambda lib, x: lib.clamp(x, -0.5, 0.7))
case("clamp_min", lambda lib, x: lib.clamp(x, min=-0.5))
case("clamp_max", lambda lib, x: x.clamp(max=0.5))
case("clamp_tensors", lambda lib, x, lo, hi: lib.clamp(x.expand(np.broadcast_shapes(
    tuple(x.shape), tuple(lo.shape), tuple(hi.shape))), lo - 1, hi + 1), many("any", "any", "any"))
case("nan_to_num", lambda lib, x: lib.nan_to_num(x), one("special"), grad=False)
case("nan_to_num_args", lambda lib, x: lib.nan_to_num(x, nan=1.0, posinf=9.0, neginf=-9.0),
     one("special"), grad=False)
for _name in ("isnan", "isinf", "isfinite", "isposinf", "isneginf"):
    case(_name, (lambda n: lambda lib, x: getattr(lib, n)(x))(_name), one("special"))

# elementwise binary over broadcast shapes
case("add", lambda lib, a, b: lib.add(a, b), many("any", "any"))
case("add_alpha", lambda lib, a, b: lib.add(a, b, alpha=2), many("any", "any"))
case("add_operator", lambda lib, a, b: a + b, many("any", "any"))
case("sub", lambda lib, a, b: lib.sub(a, b), many("any", "any"))
case("sub_alpha", lambda lib, a, b: a.sub(b, alpha=0.5), many("any", "any"))
case("mul", lambda lib, a, b: a * b, many("any", "any"))
case("div", lambda lib, a, b: lib.div(a, b), many("any", "nonzero"))
case("div_floor", lambda lib, a, b: lib.div(a, b, rounding_mode="floor"), many("any", "nonzero"),
     grad=False)
case("div_trunc", lambda lib, a, b: lib.div(a, b, rounding_mode="trunc"), many("any", "nonzero"),
     grad=False)
case("floor_divide", lambda lib, a, b: lib.floor_divide(a, b), many("any", "nonzero"),
     grad=False)
case("remainder", lambda lib, a, b: lib.remainder(a, b), many("any", "nonzero"))
case("fmod", lambda lib, a, b: lib.fmod(a, b), many("any", "nonzero"))
case("pow", lambda lib, a, b: lib.pow(a, b), many("pos", "any"))
case("pow_zero_base", lambda lib, a, b: lib.pow(a, b), many("ties", "pos"))
case("maximum", lambda lib, a, b: lib.maximum(a, b), many("any", "any"))
case("minimum", lambda lib, a, b: lib.minimum(a, b), many("any", "any"))
case("maximum_ties", lambda lib, a, b: lib.maximum(a, b), many("ties", "ties"))
case("minimum_ties", lambda lib, a, b: lib.minimum(a, b), many("ties", "ties"))
case("hypot", lambda lib, a, b: lib.hypot(a, b), many("nonzero", "nonzero"))
case("lerp_scalar", lambda lib, a, b: lib.lerp(a, b, 0.3), many("any", "any"))
case("lerp_tensor", lambda lib, a, b, w: lib.lerp(a, b, w), many("any", "any", "any"))
case("addcmul", lambda lib, a, b, c: lib.addcmul(a, b, c, value=0.5), many("any", "any", "any"))
case("addcdiv", lambda lib, a, b, c: lib.addcdiv(a, b, c), many("any", "any", "nonzero"))
case("where", lambda lib, c, a, b: lib.where(c, a, b), many("bool", "any", "any"))
case("where_scalar", lambda lib, c, a: lib.where(c, a, 0.5), many("bool", "any"))
# two Python numbers: the result takes their common dtype (float32, int64, bool)
case("where_two_numbers", lambda lib, c: (lib.where(c, 1.0, -1.0), lib.where(c, 1, 0),
                                          lib.where(c, 1, 0.5), lib.where(c, True, False)),
     one("bool"))
# two numbers (siamese example's `torch.where(outputs > 0.5, 1, 0)`): their promoted dtype
case("where_two_ints", lambda lib, x: lib.where(x > 0, 1, 0), grad=False)
case("where_int_float", lambda lib, x: lib.where(x > 0, 2, 0.25), grad=False)
case("where_two_bools", lambda lib, x: lib.where(x > 0, False, True), grad=False)
# Python numbers on either side
case("add_scalar", lambda lib, x: x + 2)
case("radd_scalar", lambda lib, x: 2.5 + x)
case("rsub_scalar", lambda lib, x: 2 - x)
case("mul_scalar", lambda lib, x: x * 1.5)
case("div_scalar", lambda lib, x: x / 3)
case("rdiv_scalar", lambda lib, x: 3 / x, one("nonzero"))
case("pow_int", lambda lib, x: x ** 3)
case("pow_square", lambda lib, x: x ** 2)
case("pow_zero", lambda lib, x: x ** 0)
case("pow_half", lambda lib, x: x ** 0.5, one("pos"))
case("pow_negative", lambda lib, x: x ** -1.5, one("pos"))
case("rpow", lambda lib, x: 2 ** x)
case("floordiv_scalar", lambda lib, x: x // 0.7, grad=False)
case("mod_scalar", lambda lib, x: x % 1.5)
case("rmod_scalar", lambda lib, x: 1.5 % x, one("nonzero"), grad=False)  # torch: no grad
case("maximum_scalar_tensor", lambda lib, x: lib.maximum(x, x.new_tensor(0.5)))
# comparisons and logic (values only: no gradients)
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    case(_name, (lambda n: lambda lib, a, b: getattr(lib, n)(a, b))(_name),
         many("ties", "ties"), dtypes=FLOATS + INTS)
    case(_name + "_scalar", (lambda n: lambda lib, a: getattr(lib, n)(a, 1))(_name),
         one("ties"), dtypes=FLOATS + INTS)
case("operators_compare", lambda lib, a, b: (a == b, a != b, a < b, a <= b, a > b, a >= b),
     many("ties", "ties"))
for _name in ("logical_and", "logical_or", "logical_xor"):
    case(_name, (lambda n: lambda lib, a, b: getattr(lib, n)(a, b))(_name),
         many("bool", "bool"))
    case(_name + "_float", (lambda n: lambda lib, a, b: getattr(lib, n)(a, b))(_name),
         many("ties", "ties"))
case("logical_not", lambda lib, x: lib.logical_not(x), one("ties"))
case("bool_operators", lambda lib, a, b: (a & b, a | b, a ^ b, ~a), many("bool", "bool"))
case("isclose", lambda lib, a, b: lib.isclose(a, b), many("ties", "ties"))

# integer arithmetic
for _name, _fn, _kinds in [
        ("int_add", lambda lib, a, b: a + b, ("any", "any")),
        ("int_sub", lambda lib, a, b: a - b, ("any", "any")),
        ("int_mul", lambda lib, a, b: a * b, ("any", "any")),
        ("int_truediv", lambda lib, a, b: a / b, ("any", "nonzero")),
        ("int_floordiv", lambda lib, a, b: a // b, ("any", "nonzero")),
        ("int_remainder", lambda lib, a, b: a % b, ("any", "nonzero")),
        ("int_div_trunc", lambda lib, a, b: lib.div(a, b, rounding_mode="trunc"),
         ("any", "nonzero")),
        ("int_fmod", lambda lib, a, b: lib.fmod(a, b), ("any", "nonzero")),
        ("int_maximum", lambda lib, a, b: lib.maximum(a, b), ("any", "any")),
        ("int_pow", lambda lib, a, b: lib.pow(a, b), ("any", "pos")),
        ("int_bitwise", lambda lib, a, b: (a & b, a | b, a ^ b, ~a), ("any", "any")),
        ("int_where", lambda lib, a, b: lib.where(a > b, a, b), ("any", "any"))]:
    case(_name, _fn, many(*_kinds), dtypes=INTS, atol=1e-6, rtol=1e-6)
for _name, _fn in [("int_neg", lambda lib, x: -x), ("int_abs", lambda lib, x: lib.abs(x)),
                   ("int_sign", lambda lib, x: lib.sign(x)),
                   ("int_exp", lambda lib, x: lib.exp(x)), ("int_sqrt", lambda lib, x: lib.sqrt(
                       lib.abs(x))), ("int_sigmoid", lambda lib, x: lib.sigmoid(x)),
                   ("int_floor", lambda lib, x: lib.floor(x)),
                   ("int_clamp", lambda lib, x: lib.clamp(x, -1, 2)),
                   ("int_mul_float", lambda lib, x: x * 1.5),
                   ("int_pow_float", lambda lib, x: x ** 2.0),
                   ("int_div_int", lambda lib, x: x / 2), ("int_isnan", lambda lib, x: (
                       lib.isnan(x), lib.isinf(x), lib.isfinite(x))),
                   ("int_nan_to_num", lambda lib, x: lib.nan_to_num(x))]:
    case(_name, _fn, one("any"), dtypes=INTS, atol=1e-6, rtol=1e-6)

# reductions
case("sum", lambda lib, x, dim, keepdim: lib.sum(x, dim, keepdim), reduced())
case("sum_all", lambda lib, x: x.sum())
case("mean", lambda lib, x, dim, keepdim: lib.mean(x, dim, keepdim), reduced(min_side=1))
case("mean_all", lambda lib, x: x.mean(), one(min_side=1))
case("nansum", lambda lib, x: lib.nansum(x), one("special"), grad=False)
case("prod", lambda lib, x, dim, keepdim: lib.prod(x, dim, keepdim),
     reduced("ties", multi=False, dim_required=True))
case("prod_all", lambda lib, x: lib.prod(x), one("ties"))
case("amax", lambda lib, x, dim, keepdim: lib.amax(x, dim, keepdim),
     reduced("ties", min_side=1, dim_required=True))
case("amin", lambda lib, x, dim, keepdim: lib.amin(x, dim, keepdim),
     reduced("ties", min_side=1, dim_required=True))
case("max_all", lambda lib, x: lib.max(x), one("ties", min_side=1))
case("min_all", lambda lib, x: x.min(), one("ties", min_side=1))
case("max_dim", lambda lib, x, dim, keepdim: lib.max(x, dim, keepdim),
     reduced(min_side=1, multi=False, dim_required=True))
case("min_dim", lambda lib, x, dim, keepdim: lib.min(x, dim=dim, keepdim=keepdim),
     reduced(min_side=1, multi=False, dim_required=True))
case("max_dim_ties", lambda lib, x, dim, keepdim: x.max(dim, keepdim),
     reduced("ties", min_side=1, multi=False, dim_required=True))
case("min_dim_ties", lambda lib, x, dim, keepdim: x.min(dim, keepdim),
     reduced("ties", min_side=1, multi=False, dim_required=True))
case("max_binary", lambda lib, a, b: lib.max(a, b), many("any", "any"))
case("argmax", lambda lib, x, dim, keepdim: lib.argmax(x, dim, keepdim),
     reduced("ties", min_side=1, multi=False))
case("argmin", lambda lib, x, dim, keepdim: lib.argmin(x, dim, keepdim),
     reduced("ties", min_side=1, multi=False))
for _c in (0, 1, 2):
    case(f"var_correction{_c}", (lambda c: lambda lib, x, dim, keepdim: lib.var(
        x, dim, keepdim=keepdim, correction=c))(_c), reduced(min_side=3))
case("var_unbiased", lambda lib, x, dim, keepdim: x.var(dim, False, keepdim),
     reduced(min_side=2))
case("std", lambda lib, x, dim, keepdim: lib.std(x, dim, keepdim=keepdim),
     reduced(min_side=3))
case("std_correction0", lambda lib, x, dim, keepdim: x.std(dim, keepdim=keepdim, correction=0),
     reduced(min_side=2))
case("logsumexp", lambda lib, x, dim, keepdim: lib.logsumexp(x, dim, keepdim),
     reduced(dim_required=True, min_side=1))
case("logsumexp_empty", lambda lib, x, dim, keepdim: lib.logsumexp(x, dim, keepdim),
     reduced(dim_required=True, multi=False))
case("all", lambda lib, x, dim, keepdim: lib.all(x) if dim is None else lib.all(x, dim, keepdim),
     reduced("ties", multi=False))
case("any", lambda lib, x, dim, keepdim: lib.any(x) if dim is None else x.any(dim, keepdim),
     reduced("ties", multi=False))
case("all_bool", lambda lib, x, dim, keepdim: lib.all(x) if dim is None else x.all(dim, keepdim),
     reduced("bool", multi=False))
for _p in (1, 2, 3, math.inf, -math.inf, 0, "fro"):
    case(f"norm_p{_p}", (lambda p: lambda lib, x, dim, keepdim: lib.norm(x, p, dim, keepdim))(
        _p), reduced("nonzero", min_side=1, multi=_p != "fro"))
case("norm_default", lambda lib, x: x.norm(), one("nonzero"))
case("cumsum", lambda lib, x, dim: lib.cumsum(x, dim), along(min_dims=0))
case("cumprod", lambda lib, x, dim: lib.cumprod(x, dim), along("nonzero", min_dims=1))
case("count_nonzero", lambda lib, x: lib.count_nonzero(x), one("ties"))
case("int_sum", lambda lib, x, dim, keepdim: lib.sum(x, dim, keepdim), reduced(),
     dtypes=INTS + (np.bool_,))
case("int_prod", lambda lib, x, dim, keepdim: lib.prod(x, dim, keepdim),
     reduced(multi=False, dim_required=True), dtypes=INTS)
case("int_amax", lambda lib, x, dim, keepdim: lib.amax(x, dim, keepdim),
     reduced(min_side=1, dim_required=True), dtypes=INTS + (np.bool_,))
case("int_max_dim", lambda lib, x, dim, keepdim: lib.max(x, dim, keepdim),
     reduced(min_side=1, multi=False, dim_required=True), dtypes=INTS)
case("int_cumsum", lambda lib, x, dim: lib.cumsum(x, dim), along(), dtypes=INTS + (np.bool_,))
case("int_argmin", lambda lib, x, dim, keepdim: lib.argmin(x, dim, keepdim),
     reduced(min_side=1, multi=False), dtypes=INTS)
case("F.batch_norm training", lambda lib, x: lib.nn.functional.batch_norm(
    x, None, None, training=True), one(min_dims=2, max_dims=4, min_side=2))
case("softmax", lambda lib, x, dim: lib.softmax(x, dim), along(min_dims=0))
case("log_softmax", lambda lib, x, dim: lib.log_softmax(x, dim), along(min_dims=0))
case("softmax_large", lambda lib, x, dim: nnf(lib).softmax(x * 100, dim=dim), along())
case("softmin", lambda lib, x, dim: nnf(lib).softmin(x, dim=dim), along())


# movement
def _reshape_target(data, shape):
    n = math.prod(shape)
    divisors = [d for d in range(1, n + 1) if n % d == 0] or [0]
    a = data.draw(st.sampled_from(divisors))
    target = (a, n // a if a else data.draw(st.integers(0, 3)))
    return data.draw(st.sampled_from([target, (-1,), (target[0], -1) if a else target,
                                      (1,) + target]))


def _with_target(data, dtype):
    shape = data.draw(shapes())
    return [values(data, shape, dtype)], {"target": _reshape_target(data, shape)}


case("reshape", lambda lib, x, target: x.reshape(target), _with_target)
case("reshape_fn", lambda lib, x, target: lib.reshape(x, target), _with_target)
case("view", lambda lib, x, target: x.view(*target), _with_target)
case("flatten", lambda lib, x, dim: lib.flatten(x, dim), along(min_dims=0))
case("flatten_range", lambda lib, x: x.flatten(1, 2), one(min_dims=3))
case("unflatten", lambda lib, x: x.unflatten(-1, (2, -1)), fixed(((3, 4), "any")))
case("squeeze", lambda lib, x: lib.squeeze(x))
case("squeeze_dim", lambda lib, x, dim: x.squeeze(dim), along(min_dims=0))
case("unsqueeze", lambda lib, x, dim: lib.unsqueeze(x, dim),
     lambda data, dtype: (lambda s: ([values(data, s, dtype)], {"dim": data.draw(
         st.integers(-len(s) - 1, len(s)))}))(data.draw(shapes())))


def _permuted(data, dtype):
    shape = data.draw(shapes())
    return [values(data, shape, dtype)], {"perm": data.draw(permutation_of(len(shape)))}


case("permute", lambda lib, x, perm: x.permute(*perm) if perm else x.permute(perm), _permuted)
case("permute_fn", lambda lib, x, perm: lib.permute(x, perm), _permuted)
case("transpose", lambda lib, x, dim, other: lib.transpose(x, dim, other),
     lambda data, dtype: (lambda s: ([values(data, s, dtype)], {
         "dim": data.draw(dim_of(s)), "other": data.draw(dim_of(s))}))(
         data.draw(shapes(min_dims=1))))
case("T", lambda lib, x: x.T, one(max_dims=2))
case("mT", lambda lib, x: x.mT, one(min_dims=2))
case("t", lambda lib, x: x.t(), one(max_dims=2))
case("movedim", lambda lib, x: lib.movedim(x, 0, -1), one(min_dims=2))


def _expand(data, dtype):
    shape = data.draw(shapes())
    target = tuple(data.draw(st.integers(0, 3)) if s == 1 else s for s in shape)
    target = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2))) + target
    with_minus = tuple(-1 if data.draw(st.booleans()) and i >= len(target) - len(shape) else t
                       for i, t in enumerate(target))
    return [values(data, shape, dtype)], {"target": with_minus}


case("expand", lambda lib, x, target: x.expand(*target) if target else x.expand(target), _expand)
case("expand_as", lambda lib, x, y: x.expand_as(y), fixed(((3, 1), "any"), ((2, 3, 4), "any")))
case("broadcast_to", lambda lib, x: lib.broadcast_to(x, (2, 3, 4)), fixed(((1, 4), "any")))
case("repeat", lambda lib, x, reps: x.repeat(*reps) if reps else x.repeat(reps),
     lambda data, dtype: (lambda s: ([values(data, s, dtype)], {"reps": tuple(data.draw(
         st.lists(st.integers(0, 3), min_size=len(s), max_size=len(s) + 2)))}))(
         data.draw(shapes())))
case("tile", lambda lib, x: lib.tile(x, (2,)), one(min_dims=1))
case("repeat_interleave", lambda lib, x, dim: lib.repeat_interleave(x, 2, dim), along())


def _catted(data, dtype):
    base = data.draw(shapes(min_dims=1))
    dim = data.draw(dim_of(base))
    sizes = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
    ins = [values(data, base[:dim % len(base)] + (n,) + base[dim % len(base) + 1:], dtype)
           for n in sizes]
    return ins, {"dim": dim}


case("cat", lambda lib, *xs, dim: lib.cat(xs, dim), _catted)
case("cat_mixed_dtype", lambda lib, x: lib.cat([x, x.to(lib.float16), x.long()], 0),
     one(min_dims=1), grad=False)


def _stacked(data, dtype):
    shape = data.draw(shapes())
    n = data.draw(st.integers(1, 3))
    return ([values(data, shape, dtype) for _ in range(n)],
            {"dim": data.draw(st.integers(-len(shape) - 1, len(shape)))})


case("stack", lambda lib, *xs, dim: lib.stack(xs, dim), _stacked)
case("split_int", lambda lib, x, dim, size: lib.split(x, size, dim),
     along(size=st.integers(1, 3)))
case("split_sizes", lambda lib, x: x.split([1, 0, 2], 1), fixed(((2, 3), "any")))
case("chunk", lambda lib, x, dim, n: lib.chunk(x, n, dim), along(min_side=1, n=st.integers(1, 4)))
case("unbind", lambda lib, x, dim: lib.unbind(x, dim), along())
case("tensor_split", lambda lib, x: lib.tensor_split(x, 3, 0), one(min_dims=1))
case("flip", lambda lib, x, dim: lib.flip(x, (dim,)), along())
case("flip_all", lambda lib, x: x.flip(list(range(x.ndim))), one(min_dims=1))
case("roll", lambda lib, x, dim, s: lib.roll(x, s, dim), along(s=st.integers(-5, 5)))
case("roll_flat", lambda lib, x: lib.roll(x, 2), one())
for _mode in ("constant", "reflect", "replicate", "circular"):
    case(f"pad_{_mode}", (lambda m: lambda lib, x: nnf(lib).pad(x, (1, 2), mode=m))(_mode),
         fixed(((2, 3, 4), "any")))
case("pad_value", lambda lib, x: nnf(lib).pad(x, (1, 0, 0, 2), value=1.5), one(min_dims=2))
case("pad_negative", lambda lib, x: nnf(lib).pad(x, (-1, 1)), one(min_dims=1, min_side=1))
case("pad_2d_reflect", lambda lib, x: nnf(lib).pad(x, (1, 1, 2, 1), mode="reflect"),
     fixed(((2, 3, 4), "any")))
case("narrow", lambda lib, x: lib.narrow(x, -1, 1, 2), one(min_dims=1, min_side=3))
case("narrow_negative_start", lambda lib, x: x.narrow(0, -2, 1), one(min_dims=1, min_side=2))
case("contiguous", lambda lib, x: x.t().contiguous() * 1, one(max_dims=2))
case("clone", lambda lib, x: x.clone())
case("tril", lambda lib, x, k: lib.tril(x, k),
     lambda data, dtype: ([values(data, data.draw(shapes(min_dims=2)), dtype)],
                          {"k": data.draw(st.integers(-2, 2))}))
case("triu", lambda lib, x, k: x.triu(k),
     lambda data, dtype: ([values(data, data.draw(shapes(min_dims=2)), dtype)],
                          {"k": data.draw(st.integers(-2, 2))}))
case("select", lambda lib, x: lib.select(x, 0, -1), one(min_dims=1, min_side=1))
case("diagonal", lambda lib, x: lib.diagonal(x, 1), one(min_dims=2))
case("diag", lambda lib, x: lib.diag(x), one(min_dims=1, max_dims=2))
case("trace", lambda lib, x: lib.trace(x), one(min_dims=2, max_dims=2))

# indexing: __getitem__


def _basic_key(data, shape):
    """A key of ints, slices with steps, None and at most one Ellipsis for `shape`."""
    key = []
    for n in shape:
        choice = data.draw(st.sampled_from(["int", "slice", "none", "all"]) if n else
                           st.sampled_from(["slice", "all"]))
        if choice == "int":
            key.append(data.draw(st.integers(-n, n - 1)))
        elif choice == "slice":
            key.append(slice(data.draw(st.one_of(st.none(), st.integers(-n - 1, n + 1))),
                             data.draw(st.one_of(st.none(), st.integers(-n - 1, n + 1))),
                             data.draw(st.one_of(st.none(), st.integers(1, 3)))))
        elif choice == "none":
            key += [None, slice(None)]
        else:
            key.append(slice(None))
    if key and data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(key) - 1))
        key = key[:at] + [Ellipsis] + [k for k in key[at:] if k is not None][1:]
    return tuple(key)


def _keyed(data, dtype):
    shape = data.draw(shapes(min_dims=1))
    return [values(data, shape, dtype)], {"key": _basic_key(data, shape)}


def _index_array(data, n, shape, negative=True):
    rng = np.random.default_rng(data.draw(seeds))
    if n == 0:
        return np.zeros(shape, dtype=np.int64)
    return rng.integers(-n if negative else 0, n, size=shape).astype(np.int64)


def _tensor_key(data, dtype):
    shape = data.draw(shapes(min_dims=1, min_side=1))
    where = data.draw(st.integers(0, len(shape) - 1))
    idx = _index_array(data, shape[where], data.draw(shapes(max_dims=2)))
    return [values(data, shape, dtype), idx], {"where": where}


def _two_tensor_keys(data, dtype):
    shape = data.draw(shapes(min_dims=2, min_side=1))
    ishape = data.draw(broadcastable(2, max_dims=2, min_side=1))
    a, b = sorted(data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=2, max_size=2,
                                     unique=True)))
    return [values(data, shape, dtype), _index_array(data, shape[a], ishape[0]),
            _index_array(data, shape[b], ishape[1])], {"a": a, "b": b}


def _masked(data, dtype):
    shape = data.draw(shapes(min_dims=1))
    k = data.draw(st.integers(1, len(shape)))
    return [values(data, shape, dtype), values(data, shape[:k], np.bool_)], {}


def _at(where, idx):
    return (slice(None),) * where + (idx,)


case("getitem_basic", lambda lib, x, key: x[key], _keyed)
case("getitem_tensor", lambda lib, x, i, where: x[_at(where, i)], _tensor_key)
case("getitem_list", lambda lib, x: x[[0, -1, 0]], one(min_dims=1, min_side=1))
case("getitem_range", lambda lib, x: x[range(x.shape[0]), 0], one(min_dims=2, min_side=1))
case("getitem_two_tensors", lambda lib, x, i, j, a, b: x[_at(a, i) + (slice(None),) * (b - a - 1)
                                                          + (j,)], _two_tensor_keys)
case("getitem_tensor_and_slice", lambda lib, x, i: x[1:, i, None],
     lambda data, dtype: ([values(data, (3, 4, 2), dtype),
                           _index_array(data, 4, data.draw(shapes(max_dims=2)))], {}))
case("getitem_mask", lambda lib, x, m: x[m], _masked)
case("getitem_mask_after_slice", lambda lib, x, m: x[:, m], fixed(((2, 3), "any"),
                                                                  np.array([True, False, True])))
case("getitem_0d_index", lambda lib, x: x[x.new_tensor(1).long()], one(min_dims=1, min_side=2))
case("masked_select", lambda lib, x, m: lib.masked_select(x, m), many("any", "bool"))


def _setitem(lib, x, v, key):
    y = x * 1
    y[key] = v
    return y


def _set_keyed(data, dtype):
    shape = data.draw(shapes(min_dims=1))
    key = _basic_key(data, shape)
    target = np.empty(shape)[key].shape
    vshape = data.draw(st.sampled_from([target, target[1:], ()]))
    return [values(data, shape, dtype), values(data, vshape, dtype)], {"key": key}


case("setitem_basic", _setitem, _set_keyed)
case("setitem_scalar", lambda lib, x: _setitem(lib, x, 2.5, (0, slice(None, None, 2))),
     one(min_dims=2, min_side=1))
case("setitem_tensor_index", lambda lib, x, v: _setitem(
    lib, x, v, (lib.tensor([2, 0]),)), fixed(((3, 2), "any"), ((2,), "any")))
case("setitem_mask", lambda lib, x, m: _setitem(lib, x, 0.0, m), _masked)
case("setitem_no_grad_value", lambda lib, x, v: _setitem(lib, x, v.detach(), (slice(1, None),)),
     fixed(((3, 2), "any"), ((2,), "any")))


def _gathered(data, dtype, unique=False):
    shape = data.draw(shapes(min_dims=1, min_side=1))
    dim = data.draw(dim_of(shape))
    d = dim % len(shape)
    ishape = tuple(data.draw(st.integers(0, n)) for n in shape)
    rng = np.random.default_rng(data.draw(seeds))
    if unique:   # one write per position: scatter's result is then well defined
        ishape = ishape[:d] + (min(ishape[d], shape[d]),) + ishape[d + 1:]
        keys = rng.random(ishape[:d] + (shape[d],) + ishape[d + 1:])
        idx = np.argsort(keys, axis=d).take(np.arange(ishape[d]), axis=d)
    else:
        idx = rng.integers(0, shape[d], size=ishape)
    return [values(data, shape, dtype), idx.astype(np.int64),
            values(data, ishape, dtype)], {"dim": dim}


case("gather", lambda lib, x, i, s, dim: lib.gather(x, dim, i), _gathered)


def _along_indices(data, dtype):
    shape = data.draw(shapes(min_dims=1, min_side=1))
    d = data.draw(dim_of(shape)) % len(shape)
    ishape = tuple(data.draw(st.integers(0, 4)) if i == d else data.draw(st.sampled_from(
        [1, n])) for i, n in enumerate(shape))
    return [values(data, shape, dtype), _index_array(data, shape[d], ishape, negative=False)], \
        {"dim": d}


case("take_along_dim", lambda lib, x, i, dim: lib.take_along_dim(x, i, dim), _along_indices)
case("scatter", lambda lib, x, i, s, dim: lib.scatter(x, dim, i, s),
     lambda data, dtype: _gathered(data, dtype, unique=True))
case("scatter_value", lambda lib, x, i, s, dim: x.scatter(dim, i, 1.5),
     lambda data, dtype: _gathered(data, dtype, unique=True))
case("scatter_add", lambda lib, x, i, s, dim: lib.scatter_add(x, dim, i, s), _gathered)


def _selected(data, dtype):
    shape = data.draw(shapes(min_dims=1, min_side=1))
    dim = data.draw(dim_of(shape))
    idx = _index_array(data, shape[dim], (data.draw(st.integers(0, 4)),), negative=False)
    return [values(data, shape, dtype), idx], {"dim": dim}


case("index_select", lambda lib, x, i, dim: lib.index_select(x, dim, i), _selected)
case("index_add", lambda lib, x, i, dim: x.index_add(dim, i, lib.index_select(x, dim, i) * 2),
     _selected)
case("index_fill", lambda lib, x, i, dim: x.index_fill(dim, i, -1.0), _selected)
case("take", lambda lib, x, i: lib.take(x, i),
     lambda data, dtype: (lambda s: ([values(data, s, dtype), _index_array(
         data, math.prod(s), data.draw(shapes(max_dims=2)))], {}))(
         data.draw(shapes(min_side=1))))
case("masked_fill", lambda lib, x, m: lib.masked_fill(x, m, -2.5), many("any", "bool"))
case("masked_fill_tensor", lambda lib, x, m: x.masked_fill(m, x.new_tensor(3.0)),
     many("any", "bool"))
case("one_hot", lambda lib, i: nnf(lib).one_hot(i, 5),
     lambda data, dtype: ([_index_array(data, 5, data.draw(shapes()), negative=False)], {}))
case("one_hot_inferred", lambda lib, i: nnf(lib).one_hot(i),
     lambda data, dtype: ([_index_array(data, 4, data.draw(shapes(min_side=1)),
                                        negative=False)], {}))
case("nonzero", lambda lib, x: lib.nonzero(x), one("ties"))
case("where_one_arg", lambda lib, x: lib.where(x > 0), one("ties"))


# matmul
def _matmuls(data, dtype):
    m, k, n = (data.draw(st.integers(0, 3)) for _ in range(3))
    batch_a, batch_b = data.draw(broadcastable(2, max_dims=2))
    kind = data.draw(st.sampled_from(["vv", "vm", "mv", "mm", "batched"]))
    a = {"vv": (k,), "vm": (k,), "mv": (m, k), "mm": (m, k), "batched": batch_a + (m, k)}[kind]
    b = {"vv": (k,), "vm": (k, n), "mv": (k,), "mm": (k, n), "batched": batch_b + (k, n)}[kind]
    if kind == "batched" and data.draw(st.booleans()):
        b = (k, n) if data.draw(st.booleans()) else (k,)
    return [values(data, a, dtype), values(data, b, dtype)], {}


case("matmul", lambda lib, a, b: lib.matmul(a, b), _matmuls)
case("matmul_operator", lambda lib, a, b: a @ b, _matmuls)
case("mm", lambda lib, a, b: lib.mm(a, b), fixed(((3, 4), "any"), ((4, 2), "any")))
case("bmm", lambda lib, a, b: lib.bmm(a, b), fixed(((2, 3, 4), "any"), ((2, 4, 1), "any")))
case("mv", lambda lib, a, b: lib.mv(a, b), fixed(((3, 4), "any"), ((4,), "any")))
case("dot", lambda lib, a, b: lib.dot(a, b), fixed(((4,), "any"), ((4,), "any")))
case("outer", lambda lib, a, b: lib.outer(a, b), fixed(((3,), "any"), ((4,), "any")))
case("addmm", lambda lib, c, a, b: lib.addmm(c, a, b, beta=0.5, alpha=2),
     fixed(((4,), "any"), ((3, 2), "any"), ((2, 4), "any")))
case("einsum_bij_bjk", lambda lib, a, b: lib.einsum("bij,bjk->bik", a, b),
     fixed(((2, 3, 4), "any"), ((2, 4, 5), "any")))
case("einsum_trace_like", lambda lib, a, b: lib.einsum("ij,ij->i", a, b),
     fixed(((3, 4), "any"), ((3, 4), "any")))
# a label repeated within one operand takes its diagonal (the NTK tutorial's 'NMKK->NM')
case("einsum_repeated_label_trace", lambda lib, a: lib.einsum("NMKK->NM", a),
     fixed(((2, 3, 4, 4), "any")))
case("einsum_repeated_label_diagonal", lambda lib, a: lib.einsum("NMKK->NMK", a),
     fixed(((2, 3, 4, 4), "any")))
case("einsum_implicit_trace", lambda lib, a: lib.einsum("ii", a), fixed(((4, 4), "any")))
case("einsum_repeated_label_pair", lambda lib, a, b: lib.einsum("iji,j->ij", a, b),
     fixed(((3, 2, 3), "any"), ((2,), "any")))
# the sublist format: operands each followed by its labels as ints (and Ellipsis), then the
# output's
case("einsum_sublists", lambda lib, a, b: lib.einsum(a, [0, 1, 2, 3], b, [0, 1, 4, 3],
                                                     [0, 1, 2, 4]),
     fixed(((2, 3, 4, 5), "any"), ((2, 3, 6, 5), "any")))
case("einsum_sublists_ellipsis_implicit", lambda lib, a, b: lib.einsum(a, [..., 26, 27], b,
                                                                       [..., 27]),
     fixed(((2, 3, 4), "any"), ((1, 4), "any")))
case("int_matmul", lambda lib, a, b: a @ b, _matmuls, dtypes=INTS)


# in-place variants on a non-leaf (autograd flows through the write)
def _inplace(method, *args):
    def fn(lib, x, *rest):
        y = x * 1
        out = getattr(y, method)(*rest, *args)
        assert out is y
        return y
    return fn


for _m, _kinds, _args in [("add_", ("any", "any"), ()), ("sub_", ("any", "any"), ()),
                          ("mul_", ("any", "any"), ()), ("div_", ("any", "nonzero"), ()),
                          ("pow_", ("pos", "any"), ()), ("clamp_", ("any",), (-0.5, 0.5)),
                          ("zero_", ("any",), ()), ("fill_", ("any",), (1.5,)),
                          ("exp_", ("any",), ()), ("sigmoid_", ("any",), ()),
                          ("relu_", ("nonzero",), ()), ("neg_", ("any",), ()),
                          ("sqrt_", ("pos",), ()), ("floor_", ("any",), ()),
                          ("lerp_", ("any", "any"), (0.25,)), ("tanh_", ("any",), ())]:
    if len(_kinds) == 2:     # the written-to tensor must already have the broadcast shape
        case(f"inplace_{_m}", _inplace(_m, *_args),
             (lambda ks: lambda data, dtype: (lambda ss: ([values(data, ss[0], dtype, ks[0]),
                                                           values(data, ss[1], dtype, ks[1])],
                                                          {}))(_in_place_shapes(data)))(_kinds))
    else:
        case(f"inplace_{_m}", _inplace(_m, *_args), one(_kinds[0]))


def _in_place_shapes(data):
    a, b = data.draw(broadcastable(2))
    from kiln.ir.ops import broadcast_shapes
    return broadcast_shapes(a, b), b


case("inplace_add_scalar", _inplace("add_", 2))
case("inplace_mul_alpha", lambda lib, x, y: (x * 1).add_(y, alpha=3), fixed(
    ((3, 4), "any"), ((4,), "any")))
case("inplace_copy_", lambda lib, x, y: (x * 1).copy_(y), fixed(((3, 4), "any"), ((4,), "any")))
case("inplace_masked_fill_", lambda lib, x, m: (x * 1).masked_fill_(m, 0.5), fixed(
    ((3, 4), "any"), np.array([True, False, False, True])))
case("inplace_iadd", lambda lib, x, y: _iadd(x * 1, y), fixed(((3, 4), "any"), ((3, 1), "any")))
case("inplace_on_view", lambda lib, x, y: _view_write(x, y),
     fixed(((3, 4), "any"), ((4,), "any")))
case("inplace_scatter_add_", lambda lib, x, i, s, dim: (x * 1).scatter_add_(dim, i, s), _gathered)
case("inplace_index_add_", lambda lib, x, i, dim: (x * 1).index_add_(dim, i, lib.index_select(
    x, dim, i)), _selected)
case("int_inplace", lambda lib, x, y: _iadd(x.clone(), y), fixed(((3, 4), "any"), ((4,), "any")),
     dtypes=INTS)


def _iadd(a, b):
    a += b
    a *= 2
    a -= b
    return a


def _view_write(x, y):
    base = x * 1
    base[1].mul_(y)       # writing through a view changes the base
    return base


# Known gaps, each a bug to fix: the test fails until it is (strict xfail).
KNOWN_GAPS: dict[str, str] = {}
PARAMS = [pytest.param(c, d, id=f"{c.name}-{np.dtype(d).name}", marks=[pytest.mark.xfail(
    reason=KNOWN_GAPS[c.name], strict=True)] if c.name in KNOWN_GAPS else [])
    for c in CASES for d in c.dtypes]


@pytest.mark.parametrize("case,dtype", PARAMS)
@EXAMPLES
@given(data=st.data())
def test_op_matches_torch(case: Case, dtype, data) -> None:
    inputs, params = case.draw(data, dtype)
    note(f"shapes {[np.shape(a) for a in inputs]}, params {params}")
    check_op(lambda lib, *ts: case.fn(lib, *ts, **params), inputs, dtype=dtype,
             grad=case.grad, atol=case.atol, rtol=case.rtol, seed=data.draw(seeds))


@pytest.mark.gpu
@pytest.mark.parametrize("case,dtype", PARAMS)
@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_op_matches_torch_on_cuda(case: Case, dtype, data) -> None:
    """The same cases with kiln's tensors on the GPU (CuPy); PyTorch stays on the CPU."""
    inputs, params = case.draw(data, dtype)
    check_op(lambda lib, *ts: case.fn(lib, *ts, **params), inputs, dtype=dtype,
             grad=case.grad, atol=case.atol, rtol=case.rtol, seed=data.draw(seeds),
             device="cuda")


# ----------------------------------------------------------------------------- in-place versions

VERSIONED = [("add_", (1.0,)), ("mul_", (2.0,)), ("zero_", ()), ("fill_", (3.0,)),
             ("clamp_", (-1.0, 1.0)), ("copy_", "other"), ("masked_fill_", "mask"),
             ("__setitem__", (0, 1.0)), ("div_", (2.0,)), ("sub_", (1.0,))]


def _version(t) -> int:
    return t._version if isinstance(t, torch.Tensor) else t._version_number


@pytest.mark.parametrize("method,args", VERSIONED, ids=[m for m, _ in VERSIONED])
def test_inplace_ops_bump_the_version_counter_as_torch_does(method, args) -> None:
    seen = []
    for lib in (torch, kiln):
        x = lib.ones(2, 3)
        view = x[0]
        if args == "other":
            args_ = (lib.zeros(2, 3),)
        elif args == "mask":
            args_ = (x > 0, 0.0)
        else:
            args_ = args
        before = (_version(x), _version(view))
        getattr(x, method)(*args_)
        seen.append((before, _version(x), _version(view), x.tolist()))
    assert seen[0][1] > seen[0][0][0]
    assert seen[1][1:] == (seen[0][1] - seen[0][0][0] + seen[1][0][0],) * 2 + (seen[0][3],)


# ----------------------------------------------------------------------------- type promotion

PROMOTION_DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
OPERANDS = {"tensor": lambda lib, d: lib.ones(2, dtype=getattr(lib, d)),
            "0-d": lambda lib, d: lib.tensor(1, dtype=getattr(lib, d))}
SCALARS = {"int": 2, "float": 2.5, "bool": True}


PROMOTIONS = [(op, a, b, kind) for op in ("add", "mul", "div", "maximum", "eq", "where")
              for a in PROMOTION_DTYPES for b in PROMOTION_DTYPES + list(SCALARS)
              for kind in (("tensor", "0-d") if b not in SCALARS else ("number",))]


@pytest.mark.parametrize("op,a,b,b_kind", PROMOTIONS, ids=["-".join(p) for p in PROMOTIONS])
def test_type_promotion_matches_torch(op, a, b, b_kind) -> None:
    def run(lib):
        x = OPERANDS["tensor"](lib, a)
        y = SCALARS[b] if b in SCALARS else OPERANDS[b_kind](lib, b)
        if op == "where":
            return lib.where(x > 0, x, y)
        if op == "maximum" and b in SCALARS:
            y = lib.tensor(y)
        return getattr(lib, op)(x, y)
    try:
        expected = run(torch)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            run(kiln)
        return
    got = run(kiln)
    assert got.dtype.name == str(expected.dtype).replace("torch.", "")
    np.testing.assert_allclose(got.numpy().astype(np.float64),
                               expected.numpy().astype(np.float64))


@pytest.mark.parametrize("operands", [
    ("int64", 2.5), ("bool", 1), ("bool", True), ("uint8", -1 + 0), ("int32", 3),
    ("float16", 1e-3), ("float64", 1)], ids=str)
def test_result_type_matches_torch(operands) -> None:
    name, scalar = operands
    t = torch.result_type(torch.ones(1, dtype=getattr(torch, name)), scalar)
    k = kiln.result_type(kiln.ones(1, dtype=getattr(kiln, name)), scalar)
    assert k.name == str(t).replace("torch.", "")


# ----------------------------------------------------------------------------- creation

CREATIONS = {
    "tensor_ints": lambda lib: lib.tensor([[1, 2], [3, 4]]),
    "tensor_floats": lambda lib: lib.tensor([[1, 2.5], [3, 4]]),
    "tensor_bools": lambda lib: lib.tensor([True, False]),
    "tensor_mixed_bool_int": lambda lib: lib.tensor([True, 2]),
    "tensor_scalar": lambda lib: lib.tensor(3.5),
    "tensor_int_scalar": lambda lib: lib.tensor(7),
    "tensor_empty": lambda lib: lib.tensor([]),
    "tensor_empty_nested": lambda lib: lib.tensor([[], []]),
    "tensor_dtype": lambda lib: lib.tensor([1, 2], dtype=lib.float64),
    "tensor_of_0d_tensors": lambda lib: lib.tensor([lib.tensor(1.5), lib.tensor(2.0)]),
    "tensor_numpy": lambda lib: lib.tensor(np.arange(6, dtype=np.int32).reshape(2, 3)),
    "as_tensor": lambda lib: lib.as_tensor([1.0, 2.0], dtype=lib.float64),
    "from_numpy": lambda lib: lib.from_numpy(np.ones((2, 2), dtype=np.float32)),
    "zeros": lambda lib: lib.zeros(2, 3),
    "zeros_tuple": lambda lib: lib.zeros((2, 0), dtype=lib.int64),
    "ones": lambda lib: lib.ones(3, dtype=lib.bool),
    "full_int": lambda lib: lib.full((2, 2), 7),
    "full_float": lambda lib: lib.full((2,), 1.5),
    "full_bool": lambda lib: lib.full((2,), True),
    "empty_shape": lambda lib: lib.empty(2, 3).shape,
    "arange_int": lambda lib: lib.arange(5),
    "arange_start_step": lambda lib: lib.arange(1, 10, 3),
    "arange_float": lambda lib: lib.arange(0, 1, 0.1),
    "arange_negative": lambda lib: lib.arange(5, 0, -2),
    "arange_dtype": lambda lib: lib.arange(4, dtype=lib.float64),
    "linspace": lambda lib: lib.linspace(0, 1, 7),
    "linspace_one": lambda lib: lib.linspace(2, 3, 1),
    "linspace_reverse": lambda lib: lib.linspace(5, -5, 11, dtype=lib.float64),
    "logspace": lambda lib: lib.logspace(0, 2, 5),
    "eye": lambda lib: lib.eye(3),
    "eye_rect": lambda lib: lib.eye(2, 4, dtype=lib.int64),
    "zeros_like": lambda lib: lib.zeros_like(lib.ones(2, 3, dtype=lib.int32)),
    "ones_like": lambda lib: lib.ones_like(lib.ones(2), dtype=lib.float64),
    "full_like": lambda lib: lib.full_like(lib.ones(2, 2), 4),
    "empty_like_shape": lambda lib: lib.empty_like(lib.ones(2, 5)).shape,
    "rand_like_shape": lambda lib: lib.rand_like(lib.ones(2, 5, dtype=lib.float64)).shape,
    "new_zeros": lambda lib: lib.ones(2, dtype=lib.float64).new_zeros(3, 1),
    "new_full": lambda lib: lib.ones(2, dtype=lib.int32).new_full((2,), 5),
    "new_tensor": lambda lib: lib.ones(2, dtype=lib.float64).new_tensor([1, 2]),
}


@pytest.mark.parametrize("name", list(CREATIONS))
def test_creation_matches_torch(name) -> None:
    expected, got = CREATIONS[name](torch), CREATIONS[name](kiln)
    if isinstance(expected, torch.Size):
        assert tuple(got) == tuple(expected)
        return
    assert got.dtype.name == str(expected.dtype).replace("torch.", "")
    assert tuple(got.shape) == tuple(expected.shape)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("make,low,high", [
    (lambda: kiln.rand(1000), 0.0, 1.0), (lambda: kiln.rand(10, 100, dtype=kiln.float64), 0, 1),
    (lambda: kiln.randint(3, 7, (1000,)), 3, 6), (lambda: kiln.randint(5, (1000,)), 0, 4),
    (lambda: kiln.randperm(50), 0, 49)])
def test_random_ranges(make, low, high) -> None:
    values = make().numpy()
    assert values.min() >= low and values.max() <= high
    if values.dtype.kind == "f":
        assert values.max() < 1.0 and values.std() > 0.2   # spread over [0, 1), not constant
    else:
        assert set(np.unique(values)) == set(range(int(low), int(high) + 1))


def test_random_shapes_and_dtypes_match_torch() -> None:
    for make in (lambda lib: lib.rand(2, 3), lambda lib: lib.randn((4,), dtype=lib.float64),
                 lambda lib: lib.randint(0, 5, (2, 2)), lambda lib: lib.randperm(4),
                 lambda lib: lib.randn(0, 3), lambda lib: lib.rand(())):
        t, k = make(torch), make(kiln)
        assert tuple(k.shape) == tuple(t.shape)
        assert k.dtype.name == str(t.dtype).replace("torch.", "")


def test_randn_is_standard_normal() -> None:
    x = kiln.randn(20000, dtype=kiln.float64).numpy()
    assert abs(x.mean()) < 0.03 and abs(x.std() - 1) < 0.03


def test_manual_seed_reproduces_random_streams() -> None:
    def draw():
        return [kiln.rand(3).tolist(), kiln.randn(2, 2).tolist(), kiln.randint(0, 9, (4,)).tolist(),
                kiln.randperm(5).tolist()]
    kiln.manual_seed(1234)
    first = draw()
    kiln.manual_seed(1234)
    assert draw() == first
    kiln.manual_seed(4321)
    assert draw() != first
    gen = kiln.Generator().manual_seed(7)
    a = kiln.rand(4, generator=gen).tolist()
    assert kiln.rand(4, generator=kiln.Generator().manual_seed(7)).tolist() == a


# ----------------------------------------------------------------------------- conversion, repr

def test_item_tolist_numpy_match_torch() -> None:
    for make in (lambda lib: lib.tensor(2.5), lambda lib: lib.tensor([[1, 2], [3, 4]]),
                 lambda lib: lib.tensor([True]), lambda lib: lib.arange(6.0).reshape(2, 3)[:, 1],
                 lambda lib: lib.tensor(3, dtype=lib.int32)):
        t, k = make(torch), make(kiln)
        assert k.tolist() == t.tolist()
        assert type(k.tolist()) is type(t.tolist())
        np.testing.assert_array_equal(k.numpy(), t.numpy())
        assert k.numpy().dtype == t.numpy().dtype
        if t.numel() == 1:
            assert k.item() == t.item() and type(k.item()) is type(t.item())
            assert float(k) == float(t) and int(k) == int(t) and bool(k) == bool(t)


def test_numpy_shares_memory_like_torch() -> None:
    x = kiln.zeros(3)
    x.numpy()[1] = 5.0
    assert x.tolist() == [0.0, 5.0, 0.0]
    with pytest.raises(RuntimeError, match="requires grad"):
        kiln.ones(2, requires_grad=True).numpy()
    with pytest.raises(RuntimeError, match="cannot be converted to Scalar"):
        kiln.ones(2).item()


@pytest.mark.parametrize("make", [
    lambda lib: lib.tensor([1.0, 2.5, -3.0]), lambda lib: lib.tensor([1, 2, 3]),
    lambda lib: lib.tensor([True, False]), lambda lib: lib.tensor(2.0),
    lambda lib: lib.tensor([1.0, 2.0], dtype=lib.float64), lambda lib: lib.zeros(0),
    lambda lib: lib.tensor([1.0, 2.0], requires_grad=True), lambda lib: lib.tensor([[1.5, 2]]),
    lambda lib: lib.tensor([1, 2], dtype=lib.int32), lambda lib: lib.tensor([0.0001, 1e5])],
)
def test_repr_matches_torch(make) -> None:
    assert repr(make(kiln)) == repr(make(torch)).replace("torch.", "kiln.")


@pytest.mark.parametrize("make", [
    lambda lib: lib.ones(2), lambda lib: lib.ones(2, dtype=lib.float32), lambda lib: lib.zeros(0),
    lambda lib: lib.zeros(0, dtype=lib.float32), lambda lib: lib.zeros(0, dtype=lib.int64),
    lambda lib: lib.empty(2, device="meta"), lambda lib: lib.empty(2, device="meta",
                                                                   dtype=lib.float32)])
def test_repr_names_a_dtype_unless_it_is_the_default_one(make) -> None:
    for lib in (torch, kiln):
        lib.set_default_dtype(lib.float64)
    try:
        assert repr(make(kiln)) == repr(make(torch)).replace("torch.", "kiln.")
    finally:
        for lib in (torch, kiln):
            lib.set_default_dtype(lib.float32)


PRINTOPTIONS = [dict(precision=3), dict(precision=2, sci_mode=True), dict(sci_mode=False),
                dict(threshold=5), dict(threshold=5, edgeitems=1), dict(linewidth=20),
                dict(profile="short"), dict(profile="full"), dict(precision=6, profile="short")]
PRINTED = [lambda lib: lib.tensor(1.0986123), lambda lib: lib.tensor([1.0986123, 2.5, -3.0]),
           lambda lib: lib.tensor([[1e-6, 1.0], [1e5, 2.0]]), lambda lib: lib.arange(10.0),
           lambda lib: lib.arange(12).reshape(3, 4), lambda lib: lib.arange(2000.0),
           lambda lib: lib.tensor([1.0, 2.0])]


def _printed_values(kind: str, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(len(shape) + len(kind))
    n = int(np.prod(shape))
    values = {"ints": lambda: rng.integers(-1000, 1000, n),
              "bools": lambda: rng.random(n) > 0.5,
              "huge": lambda: (rng.standard_normal(n) * 1e9).astype(np.float32),
              "tiny": lambda: (rng.standard_normal(n) * 1e-5).astype(np.float32),
              "whole": lambda: np.round(rng.standard_normal(n) * 100).astype(np.float32),
              "float16": lambda: (rng.standard_normal(n) * 10).astype(np.float16),
              "float64": lambda: rng.standard_normal(n) * 10}[kind]()
    if kind in ("huge", "whole") and n > 2:
        values[::3] = np.nan
        values[1::5] = -np.inf
    return values.reshape(shape)


@pytest.mark.parametrize("shape", [(), (5,), (7, 3), (2, 3, 4), (1200,), (40, 40), (2, 2, 300),
                                   (2, 0)], ids=str)
@pytest.mark.parametrize("kind", ["ints", "bools", "huge", "tiny", "whole", "float16",
                                  "float64"])
def test_layout_matches_torch(kind, shape) -> None:
    """Widths, wrapping, elided runs of a large tensor and where `dtype=` goes."""
    a = _printed_values(kind, shape)
    assert repr(kiln.tensor(a)) == repr(torch.tensor(a)).replace("torch.", "kiln.")


@pytest.mark.parametrize("options", PRINTOPTIONS, ids=str)
def test_printoptions_match_torch(options) -> None:
    """set_printoptions changes what it is given (a profile resets the counts first) and keeps
    the rest; every tensor prints as torch's does under the same options."""
    try:
        for lib in (torch, kiln):
            lib.set_printoptions(**options)
        for make in PRINTED:
            assert repr(make(kiln)) == repr(make(torch)).replace("torch.", "kiln.")
        for lib in (torch, kiln):               # a second call keeps the first's options
            lib.set_printoptions(linewidth=60)
        assert repr(PRINTED[5](kiln)) == repr(PRINTED[5](torch))
    finally:
        for lib in (torch, kiln):
            lib.set_printoptions(profile="default")
    assert np.get_printoptions()["precision"] == 8          # NumPy's own options untouched


def test_repr_of_results_names_the_grad_fn() -> None:
    x = kiln.ones(2, requires_grad=True)
    text = repr(x * 2)
    assert text.startswith("tensor([2., 2.]") and "grad_fn=<MulBackward0>" in text
    assert repr(kiln.ones(2, 3).shape) == "kiln.Size([2, 3])"


ACTIVATIONS = ["relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh",
               "hardtanh", "relu6"]


# The mathematical value of each activation at NaN, -inf and +inf (its limits). PyTorch's own
# answers there depend on its CPU code path (its vectorized GELU gives NaN at +inf on some
# CPUs and inf on others; x * gate(x) gives -inf * 0 = NaN at -inf), so they are not the
# reference at these points; everywhere else they are.
EDGE_VALUES = {"relu": (0.0, np.inf), "leaky_relu": (-np.inf, np.inf), "elu": (-1.0, np.inf),
               "gelu": (0.0, np.inf), "gelu_tanh": (0.0, np.inf), "silu": (0.0, np.inf),
               "mish": (0.0, np.inf), "hardswish": (0.0, np.inf), "softplus": (0.0, np.inf),
               "sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "hardtanh": (-1.0, 1.0),
               "relu6": (0.0, 6.0)}


def _activation(lib, op):
    if op == "gelu_tanh":
        return lambda x: lib.nn.functional.gelu(x, approximate="tanh")
    return getattr(lib.nn.functional, op)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", sorted(EDGE_VALUES))
def test_activations_at_nan_and_inf_give_their_limits(op, dtype) -> None:
    finite = np.array([-2.0, -0.0, 0.0, 0.5], dtype=dtype)
    check_op(lambda lib, x: _activation(lib, op)(x), [finite], dtype=dtype, grad=False)
    at_minus_inf, at_plus_inf = EDGE_VALUES[op]
    got = _activation(kiln, op)(kiln.tensor(np.array([np.nan, -np.inf, np.inf], dtype)))
    assert got.dtype.name == np.dtype(dtype).name
    np.testing.assert_array_equal(got.numpy(), np.array([np.nan, at_minus_inf, at_plus_inf]))


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_activation_gradients_at_kinks_and_bounds_match_torch(op) -> None:
    values = np.array([-7.0, -6.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 6.0, 7.0], dtype=np.float64)
    check_op(lambda lib, x: getattr(lib.nn.functional, op)(x), [values], dtype=np.float64)


# lerp at the weights where PyTorch switches formula (|w| >= 0.5: end - (end - input) * (1 - w)),
# with infinities and huge operands. PyTorch's vectorized CPU loop fuses the multiply-add where
# the CPU has FMA, so finite values agree to a rounding; w = 0 and w = 1 are exact, and which
# elements are inf or NaN is the same everywhere.
LERP_START = [0.0, 1.0, -np.inf, np.inf, 0.3, -0.9, 2.0, 0.1, -4.0, 3.0]     # x biggest finite
LERP_END = [1.0, np.inf, 1.0, np.inf, -0.9, 0.9, 2.0, 0.7, 5.0, -1e-3]


def _lerp_results(lib, weight, weight_tensor: bool, dtype):
    huge = np.ones(len(LERP_START), dtype)
    huge[4:6] = np.finfo(dtype).max
    start = lib.tensor(np.array(LERP_START, dtype) * huge, requires_grad=True)
    end = lib.tensor(np.array(LERP_END, dtype) * huge, requires_grad=True)
    w = lib.tensor(np.full(len(LERP_START), weight, dtype), requires_grad=True) \
        if weight_tensor else weight
    out = lib.lerp(start, end, w)
    out.backward(lib.arange(1.0, len(LERP_START) + 1, dtype=start.dtype))
    grads = [start.grad, end.grad] + ([w.grad] if weight_tensor else [])
    return [out.detach().numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_tensor", [False, True], ids=["number", "tensor"])
@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 0.7, 1.0, -0.5, 1.5])
def test_lerp_matches_torch_across_its_two_formulas(weight, weight_tensor, dtype) -> None:
    got = _lerp_results(kiln, weight, weight_tensor, dtype)
    want = _lerp_results(torch, weight, weight_tensor, dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=0, equal_nan=True)
    if weight in (0.0, 1.0):
        np.testing.assert_array_equal(got[0], want[0])


def test_lerp_dtype_rules_match_torch() -> None:
    for lib in (torch, kiln):
        x32, x64 = lib.ones(3), lib.ones(3, dtype=lib.float64)
        with pytest.raises(RuntimeError, match="for `end`"):
            lib.lerp(x32, x64, 0.5)
        with pytest.raises(RuntimeError, match="for `weight`"):
            lib.lerp(x32, x32, x64)
    # a 0-dim weight of another dtype is taken in input's dtype, and gets its gradient
    grads = []
    for lib in (torch, kiln):
        x = lib.tensor([1.0, -2.0], requires_grad=True)
        w = lib.tensor(0.7, dtype=lib.float64, requires_grad=True)
        out = lib.lerp(x, lib.tensor([3.0, 4.0]), w)
        out.sum().backward()
        assert out.dtype == lib.float32 and w.grad.dtype == lib.float64
        grads.append((out.detach().numpy(), x.grad.numpy(), w.grad.numpy()))
    for g, w in zip(*grads):
        np.testing.assert_allclose(g, w, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_lerp_of_half_types_rounds_once_as_torch(dtype) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-4, 4, (2, 64))
    for weight in (0.3, 0.7):
        want = torch.lerp(torch.tensor(a).to(getattr(torch, dtype)),
                          torch.tensor(b).to(getattr(torch, dtype)), weight)
        got = kiln.lerp(kiln.tensor(a).to(getattr(kiln, dtype)),
                        kiln.tensor(b).to(getattr(kiln, dtype)), weight)
        np.testing.assert_array_equal(got.float().numpy(), want.float().numpy())


# every factory takes PyTorch's `layout=`: strided (its default) as without it; zeros and empty
# (and new_zeros/new_empty) also in sparse COO/CSR layouts, as PyTorch makes them (no entries);
# the others refuse a sparse layout
LAYOUT_FACTORIES = {
    "zeros": lambda L, lay: L.zeros(2, 3, layout=lay),
    "empty": lambda L, lay: L.empty(2, 3, layout=lay).zero_() if lay is L.strided
    else L.empty(2, 3, layout=lay),
    "ones": lambda L, lay: L.ones(2, 3, layout=lay),
    "full": lambda L, lay: L.full((2, 3), 1.5, layout=lay),
    "zeros_like": lambda L, lay: L.zeros_like(L.ones(2), layout=lay),
    "ones_like": lambda L, lay: L.ones_like(L.ones(2), layout=lay),
    "full_like": lambda L, lay: L.full_like(L.ones(2), 3.0, layout=lay),
    "empty_like": lambda L, lay: L.empty_like(L.ones(2), layout=lay).shape,
    "rand": lambda L, lay: L.rand(2, 3, layout=lay).shape,
    "randn": lambda L, lay: L.randn(2, 3, layout=lay).shape,
    "randint": lambda L, lay: L.randint(0, 5, (2, 3), layout=lay).shape,
    "randperm": lambda L, lay: L.randperm(4, layout=lay).sort().values,
    "rand_like": lambda L, lay: L.rand_like(L.ones(2), layout=lay).shape,
    "arange": lambda L, lay: L.arange(5, layout=lay),
    "linspace": lambda L, lay: L.linspace(0, 1, 5, layout=lay),
    "logspace": lambda L, lay: L.logspace(0, 1, 5, layout=lay),
    "eye": lambda L, lay: L.eye(3, layout=lay),
    "tril_indices": lambda L, lay: L.tril_indices(3, 3, layout=lay),
    "scalar_tensor": lambda L, lay: L.scalar_tensor(3, layout=lay),
    "hann_window": lambda L, lay: L.hann_window(4, layout=lay),
    "empty_strided": lambda L, lay: L.empty_strided((2, 3), (3, 1), layout=lay).shape,
    "new_zeros": lambda L, lay: L.ones(2).new_zeros(2, 3, layout=lay),
    "new_ones": lambda L, lay: L.ones(2).new_ones(3, layout=lay),
    "new_full": lambda L, lay: L.ones(2).new_full((3,), 2.0, layout=lay),
}
SPARSE_ZEROS = {"zeros", "empty", "new_zeros"}


@pytest.mark.parametrize("name", sorted(LAYOUT_FACTORIES))
def test_factories_take_a_layout_as_torch(name) -> None:
    make = LAYOUT_FACTORIES[name]
    got, want = make(kiln, kiln.strided), make(torch, torch.strided)
    if isinstance(want, torch.Tensor):
        assert str(got.layout) == "kiln.strided" and got.dtype.name == str(want.dtype)[6:]
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    else:
        assert tuple(got) == tuple(want)
    for layout in ("sparse_coo", "sparse_csr"):
        if name in SPARSE_ZEROS:
            got, want = make(kiln, getattr(kiln, layout)), make(torch, getattr(torch, layout))
            assert str(got.layout)[5:] == str(want.layout)[6:] and got.shape == want.shape
            assert got._nnz() == want._nnz() == 0
            np.testing.assert_array_equal(got.to_dense().numpy(), want.to_dense().numpy())
        else:
            with pytest.raises(NotImplementedError, match="strided"):
                make(kiln, getattr(kiln, layout))
