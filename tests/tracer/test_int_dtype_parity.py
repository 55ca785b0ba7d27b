"""Integer and bool tensors against PyTorch, op by op: every public op that PyTorch computes on
int8, int16, int32, int64, uint8 or bool inputs gives kiln's result the same dtype and the same
values (wrap-around included), and where PyTorch refuses, kiln refuses with the same class of
exception. A wrong result dtype on integers is a silent wrong answer (an accuracy counter that
turns float, index math that truncates), so the sweep compares dtypes exactly."""

import warnings

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch")

INTS = ["int8", "int16", "int32", "int64", "uint8"]
DTYPES = INTS + ["bool"]


def sample(name: str, shift: int = 0) -> list:
    """Eight values of dtype `name`: its limits, their neighbours, zero, one and small values
    of both signs, rotated by `shift` so that two operands differ element by element."""
    if name == "bool":
        values = [True, False, True, True, False, False, True, False]
    else:
        info = np.iinfo(name)
        values = [int(info.min), int(info.min) + 1, -3, -1, 0, 1, 5, int(info.max)]
        if info.min == 0:
            values[2:4] = [3, int(info.max) - 1]
    return values[shift:] + values[:shift]


def nonzero_sample(name: str, shift: int = 0) -> list:
    """`sample` with every zero replaced by a small nonzero value (divisors)."""
    return [v if v else (True if name == "bool" else 7) for v in sample(name, shift)]


def inputs(lib, name: str):
    dtype = getattr(lib, name)
    return (lib.tensor(sample(name), dtype=dtype), lib.tensor(sample(name, 3), dtype=dtype),
            lib.tensor(nonzero_sample(name, 5), dtype=dtype))


def outcome(run, lib):
    """What `run(lib)` gives: ("ok", [(dtype, shape, values)...]) or ("raises", class, text)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = run(lib)
    except Exception as e:            # noqa: BLE001 - the class is what is compared
        return "raises", type(e), str(e)
    return "ok", flatten(out)


def flatten(out) -> list:
    if isinstance(out, (tuple, list)):
        return [item for part in out for item in flatten(part)]
    if hasattr(out, "dtype") and hasattr(out, "shape"):
        return [(str(out.dtype).split(".")[-1], tuple(out.shape), out.detach().cpu().numpy())]
    return [(type(out).__name__, (), np.asarray(out))]


def assert_same(fn, name):
    """`fn(lib, x, y, d)` on the dtype `name`'s sample inputs, the same in kiln as in torch."""
    assert_same_run(lambda lib: fn(lib, *inputs(lib, name)))


def assert_same_run(run):
    want = outcome(run, torch)
    got = outcome(run, kiln)
    if want[0] == "raises":
        assert got[0] == "raises", \
            f"torch raises {want[1].__name__}({want[2]!r}); kiln gave {got[1]}"
        assert issubclass(got[1], want[1]), \
            f"torch raises {want[1].__name__}({want[2]!r}); kiln {got[1].__name__}({got[2]!r})"
        return
    assert got[0] == "ok", f"kiln raises {got[1].__name__}({got[2]!r}); torch gives {want[1]}"
    assert len(got[1]) == len(want[1])
    for (gd, gs, gv), (wd, ws, wv) in zip(got[1], want[1]):
        assert (gd, gs) == (wd, ws), f"kiln {gd}{list(gs)} != torch {wd}{list(ws)}"
        if np.issubdtype(wv.dtype, np.floating):
            np.testing.assert_allclose(gv, wv, rtol=1e-5, atol=0, equal_nan=True)
        else:
            np.testing.assert_array_equal(gv, wv)


def cases(table: dict, dtypes=DTYPES, xfail: dict = None):
    """pytest params (op, dtype) of a table of `fn(lib, x, y, d)`; `xfail` maps
    (op, dtype or None for every dtype) to the reason kiln cannot match yet."""
    xfail = xfail or {}
    params = []
    for op, fn in table.items():
        for name in dtypes:
            reason = xfail.get((op, name)) or xfail.get((op, None))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(fn, name, id=f"{op}-{name}", marks=marks))
    return params


UNARY = {
    "neg": lambda t, x, y, d: -x,
    "torch.neg": lambda t, x, y, d: t.neg(x),
    "abs": lambda t, x, y, d: t.abs(x),
    "sign": lambda t, x, y, d: t.sign(x),
    "sgn": lambda t, x, y, d: x.sgn(),
    "positive": lambda t, x, y, d: t.positive(x),
    "bitwise_not": lambda t, x, y, d: ~x,
    "logical_not": lambda t, x, y, d: t.logical_not(x),
    "square": lambda t, x, y, d: t.square(x),
    "sqrt": lambda t, x, y, d: t.sqrt(x),
    "exp": lambda t, x, y, d: t.exp(d),
    "sin": lambda t, x, y, d: t.sin(x),
    "sigmoid": lambda t, x, y, d: t.sigmoid(x),
    "reciprocal": lambda t, x, y, d: t.reciprocal(d),
    "floor": lambda t, x, y, d: t.floor(x),
    "ceil": lambda t, x, y, d: t.ceil(x),
    "round": lambda t, x, y, d: t.round(x),
    "trunc": lambda t, x, y, d: t.trunc(x),
    "frac": lambda t, x, y, d: t.frac(x),
    "isnan": lambda t, x, y, d: t.isnan(x),
    "isfinite": lambda t, x, y, d: t.isfinite(x),
    "signbit": lambda t, x, y, d: t.signbit(x),
    "clone": lambda t, x, y, d: x.clone(),
    "float": lambda t, x, y, d: x.float(),
    "long": lambda t, x, y, d: x.long(),
    "to_uint8": lambda t, x, y, d: x.to(t.uint8),
    "to_int8": lambda t, x, y, d: x.to(t.int8),
    "bool": lambda t, x, y, d: x.bool(),
    "relu": lambda t, x, y, d: t.relu(x),
    "nonzero": lambda t, x, y, d: t.nonzero(x),
    "tolist": lambda t, x, y, d: t.tensor(x.tolist()),
    "item": lambda t, x, y, d: x[-1].item(),
    "abs_of_minimum_wraps": lambda t, x, y, d: x[:2].abs(),
    "neg_wraps": lambda t, x, y, d: t.neg(x[:2]) if x.dtype != t.bool else x,
    "bitwise_not_method": lambda t, x, y, d: x.bitwise_not(),
    "float_power": lambda t, x, y, d: t.float_power(x, 2),
    "exp2_refused_or_float": lambda t, x, y, d: t.exp2(x),
    "log1p": lambda t, x, y, d: t.log1p(x.abs() if x.dtype != t.bool else x),
    "erf": lambda t, x, y, d: t.erf(x),
    "relu_method": lambda t, x, y, d: x.relu(),
    "nan_to_num": lambda t, x, y, d: t.nan_to_num(x),
}

BINARY = {
    "add": lambda t, x, y, d: x + y,
    "sub": lambda t, x, y, d: x - y,
    "mul": lambda t, x, y, d: x * y,
    "truediv": lambda t, x, y, d: x / d,
    "floordiv": lambda t, x, y, d: x // d,
    "mod": lambda t, x, y, d: x % d,
    "pow": lambda t, x, y, d: x.abs() ** 2 if x.dtype != t.bool else x ** y,
    "div_floor": lambda t, x, y, d: t.div(x, d, rounding_mode="floor"),
    "div_trunc": lambda t, x, y, d: t.div(x, d, rounding_mode="trunc"),
    "true_divide": lambda t, x, y, d: t.true_divide(x, d),
    "floor_divide": lambda t, x, y, d: t.floor_divide(x, d),
    "remainder": lambda t, x, y, d: t.remainder(x, d),
    "fmod": lambda t, x, y, d: t.fmod(x, d),
    "and": lambda t, x, y, d: x & y,
    "or": lambda t, x, y, d: x | y,
    "xor": lambda t, x, y, d: x ^ y,
    "lshift": lambda t, x, y, d: x << (y.abs() % 5 if x.dtype != t.bool else y),
    "rshift": lambda t, x, y, d: x >> (y.abs() % 5 if x.dtype != t.bool else y),
    "maximum": lambda t, x, y, d: t.maximum(x, y),
    "minimum": lambda t, x, y, d: t.minimum(x, y),
    "fmax": lambda t, x, y, d: t.fmax(x, y),
    "logical_and": lambda t, x, y, d: t.logical_and(x, y),
    "logical_xor": lambda t, x, y, d: t.logical_xor(x, y),
    "eq": lambda t, x, y, d: x == y,
    "ne": lambda t, x, y, d: x != y,
    "lt": lambda t, x, y, d: x < y,
    "ge": lambda t, x, y, d: x >= y,
    "torch.gt": lambda t, x, y, d: t.gt(x, y),
    "eq_method": lambda t, x, y, d: x.eq(y),
    "equal": lambda t, x, y, d: t.equal(x, y),
    "atan2": lambda t, x, y, d: t.atan2(x, d),
    "hypot_refused": lambda t, x, y, d: t.hypot(x, y),
    "gcd": lambda t, x, y, d: t.gcd(x, y),
    "copysign": lambda t, x, y, d: t.copysign(x, d),
    "addalpha": lambda t, x, y, d: t.add(x, y, alpha=2),
    "subalpha": lambda t, x, y, d: t.sub(x, y, alpha=3),
    "add_scalar_alpha_positional": lambda t, x, y, d: t.add(x, 2, 3),
    "add_scalar_alpha": lambda t, x, y, d: t.add(x, 2, alpha=3),
    "rsub": lambda t, x, y, d: t.rsub(x, y),
    "lerp_refused": lambda t, x, y, d: t.lerp(x, y, 0.5),
    "max_binary": lambda t, x, y, d: t.max(x, y),
    "logical_or_float": lambda t, x, y, d: t.logical_or(x, y.float()),
    "remainder_float_tensor": lambda t, x, y, d: t.remainder(x, d.double()),
    "isclose": lambda t, x, y, d: t.isclose(x, y),
    "addcmul": lambda t, x, y, d: t.addcmul(x, y, d, value=2),
    "where_mixed_signedness": lambda t, x, y, d: t.where(x > y, x.to(t.uint8), y.to(t.int8)),
    "bitwise_and_method": lambda t, x, y, d: x.bitwise_and(y),
    "xor_bool_int": lambda t, x, y, d: x ^ y.bool(),
}

SCALAR = {
    "add_int": lambda t, x, y, d: x + 3,
    "radd_int": lambda t, x, y, d: 3 + x,
    "sub_int": lambda t, x, y, d: x - 2,
    "rsub_int": lambda t, x, y, d: 2 - x,
    "mul_int": lambda t, x, y, d: x * 3,
    "add_float": lambda t, x, y, d: x + 0.5,
    "rmul_float": lambda t, x, y, d: 1.5 * x,
    "add_bool": lambda t, x, y, d: x + True,
    "mul_bool": lambda t, x, y, d: False * x,
    "div_int": lambda t, x, y, d: x / 2,
    "rdiv_int": lambda t, x, y, d: 6 / d,
    "floordiv_int": lambda t, x, y, d: x // 3,
    "floordiv_neg": lambda t, x, y, d: x // -3,
    "rfloordiv_int": lambda t, x, y, d: 7 // d,
    "floordiv_float": lambda t, x, y, d: x // 2.5,
    "mod_int": lambda t, x, y, d: x % 3,
    "mod_neg": lambda t, x, y, d: x % -3,
    "rmod_int": lambda t, x, y, d: 7 % d,
    "mod_float": lambda t, x, y, d: x % 2.5,
    "fmod_neg": lambda t, x, y, d: t.fmod(x, -3),
    "remainder_neg": lambda t, x, y, d: t.remainder(x, -3),
    "div_trunc_neg": lambda t, x, y, d: t.div(x, -3, rounding_mode="trunc"),
    "div_floor_float": lambda t, x, y, d: t.div(x, 2.5, rounding_mode="floor"),
    "pow_int": lambda t, x, y, d: x ** 2,
    "pow_float": lambda t, x, y, d: x.abs() ** 0.5 if x.dtype != t.bool else x ** 0.5,
    "pow_neg_int": lambda t, x, y, d: d ** -1,
    "pow_neg_float": lambda t, x, y, d: d ** -1.0,
    "rpow_int": lambda t, x, y, d: 2 ** (x.abs() % 5 if x.dtype != t.bool else x),
    "rpow_float": lambda t, x, y, d: 0.5 ** (x.abs() % 5 if x.dtype != t.bool else x),
    "torch.pow_tensor_neg": lambda t, x, y, d: t.pow(d, t.tensor(-1)),
    "and_int": lambda t, x, y, d: x & 6,
    "or_bool": lambda t, x, y, d: x | True,
    "xor_int": lambda t, x, y, d: 5 ^ x,
    "lshift_int": lambda t, x, y, d: x << 2,
    "rshift_int": lambda t, x, y, d: x >> 1,
    "rlshift_int": lambda t, x, y, d: 1 << (x.abs() % 5 if x.dtype != t.bool else x),
    "and_float_refused": lambda t, x, y, d: x & 1.5,
    "eq_int": lambda t, x, y, d: x == 1,
    "lt_float": lambda t, x, y, d: x < 0.5,
    "gt_out_of_range": lambda t, x, y, d: x > 1000,
    "eq_out_of_range": lambda t, x, y, d: x == -1000,
    "add_wraps": lambda t, x, y, d: x + 100,
    "add_out_of_range": lambda t, x, y, d: x + 1000,
    "mul_out_of_range": lambda t, x, y, d: x * 300,
    "sub_neg_uint": lambda t, x, y, d: x - 1,
    "maximum_0d": lambda t, x, y, d: t.maximum(x, t.tensor(3)),
    "add_0d_int64": lambda t, x, y, d: x + t.tensor(3),
    "add_0d_float": lambda t, x, y, d: x + t.tensor(0.5),
    "add_0d_bool": lambda t, x, y, d: x + t.tensor(True),
    "add_0d_int8": lambda t, x, y, d: x + t.tensor(3, dtype=t.int8),
    "add_0d_uint8": lambda t, x, y, d: t.tensor(3, dtype=t.uint8) + x,
    "add_0d_double": lambda t, x, y, d: x + t.tensor(0.5, dtype=t.float64),
    "add_1d_int16": lambda t, x, y, d: x + y.to(t.int16),
    "add_1d_uint8": lambda t, x, y, d: x + y.to(t.uint8),
    "mul_1d_float16": lambda t, x, y, d: x * y.to(t.float16),
    "where_0d_both": lambda t, x, y, d: t.where(x > 0, t.tensor(1), t.tensor(2.5)),
}

REDUCTIONS = {
    "sum": lambda t, x, y, d: x.sum(),
    "sum_dim": lambda t, x, y, d: x.view(2, 4).sum(1),
    "sum_keepdim": lambda t, x, y, d: t.sum(x.view(2, 4), dim=0, keepdim=True),
    "sum_dtype_int32": lambda t, x, y, d: x.sum(dtype=t.int32),
    "sum_dtype_float": lambda t, x, y, d: x.sum(dtype=t.float64),
    "sum_dtype_int8": lambda t, x, y, d: t.sum(x, 0, dtype=t.int8),
    "nansum": lambda t, x, y, d: t.nansum(x),
    "prod": lambda t, x, y, d: x.prod(),
    "prod_dim": lambda t, x, y, d: d.view(4, 2).prod(1),
    "prod_dtype": lambda t, x, y, d: d.prod(dtype=t.int16),
    "mean_refused": lambda t, x, y, d: x.mean(),
    "mean_dtype": lambda t, x, y, d: x.mean(dtype=t.float64),
    "cumsum": lambda t, x, y, d: x.cumsum(0),
    "cumsum_dtype": lambda t, x, y, d: t.cumsum(x, 0, dtype=t.int16),
    "cumprod": lambda t, x, y, d: d.cumprod(0),
    "cumprod_dtype": lambda t, x, y, d: d.cumprod(0, dtype=t.float32),
    "cummax": lambda t, x, y, d: t.cummax(x, 0),
    "cummin": lambda t, x, y, d: x.cummin(0),
    "logcumsumexp_refused": lambda t, x, y, d: t.logcumsumexp(x, 0),
    "min": lambda t, x, y, d: x.min(),
    "max": lambda t, x, y, d: x.max(),
    "max_dim": lambda t, x, y, d: x.view(2, 4).max(1),
    "min_dim": lambda t, x, y, d: t.min(x.view(2, 4), 0),
    "amax": lambda t, x, y, d: x.view(2, 4).amax(1),
    "amin": lambda t, x, y, d: t.amin(x.view(2, 4), 0),
    "aminmax": lambda t, x, y, d: t.aminmax(x),
    "argmax": lambda t, x, y, d: x.argmax(),
    "argmin_dim": lambda t, x, y, d: x.view(2, 4).argmin(1),
    "all": lambda t, x, y, d: x.all(),
    "any_dim": lambda t, x, y, d: x.view(2, 4).any(1),
    "all_dim": lambda t, x, y, d: t.all(x.view(4, 2), 0),
    "count_nonzero": lambda t, x, y, d: t.count_nonzero(x),
    "count_nonzero_dim": lambda t, x, y, d: x.view(2, 4).count_nonzero(1),
    "var_refused": lambda t, x, y, d: x.var(),
    "std_refused": lambda t, x, y, d: t.std(x),
    "std_dim_refused": lambda t, x, y, d: x.view(2, 4).std(1),
    "var_mean_refused": lambda t, x, y, d: t.var_mean(x),
    "median": lambda t, x, y, d: x.median(),
    "mode": lambda t, x, y, d: t.mode(x.view(2, 4), 1),
    "norm_refused": lambda t, x, y, d: x.norm(),
    "logsumexp": lambda t, x, y, d: t.logsumexp(x, 0),
    "softmax_refused": lambda t, x, y, d: t.softmax(x, 0),
    "diff": lambda t, x, y, d: t.diff(x),
    "bincount": lambda t, x, y, d: t.bincount(x.abs() % 4),
    "histc_refused": lambda t, x, y, d: t.histc(x),
    "prod_bool_dim": lambda t, x, y, d: x.view(2, 4).prod(1),
    "cumsum_bool_dim": lambda t, x, y, d: (x > y).cumsum(0),
    "sum_dtype_bool": lambda t, x, y, d: x.sum(dtype=t.bool),
    "nanmean_refused": lambda t, x, y, d: t.nanmean(x),
    "max_keepdim": lambda t, x, y, d: x.view(2, 4).max(1, keepdim=True),
    "min_bool_dim": lambda t, x, y, d: (x > y).view(2, 4).min(1),
    "logsumexp_dim": lambda t, x, y, d: t.logsumexp(x.view(2, 4), 1),
}

CLAMP_WHERE = {
    "clamp_int": lambda t, x, y, d: x.clamp(-2, 3),
    "clamp_min_int": lambda t, x, y, d: t.clamp(x, min=1),
    "clamp_float": lambda t, x, y, d: x.clamp(-2.5, 3.5),
    "clamp_max_float": lambda t, x, y, d: x.clamp(max=2.5),
    "clamp_tensor": lambda t, x, y, d: t.clamp(x, y, d),
    "clip": lambda t, x, y, d: t.clip(x, 0, 1),
    "clamp_out_of_range": lambda t, x, y, d: x.clamp(0, 1000),
    "where_same": lambda t, x, y, d: t.where(x > y, x, y),
    "where_int_scalar": lambda t, x, y, d: t.where(x > y, x, 2),
    "where_float_scalar": lambda t, x, y, d: t.where(x > y, x, 0.5),
    "where_scalar_scalar": lambda t, x, y, d: t.where(x > y, 1, 0),
    "where_mixed_ints": lambda t, x, y, d: t.where(x > y, x, y.to(t.int16)),
    "where_float_tensor": lambda t, x, y, d: t.where(x > y, x, y.float()),
    "where_out_of_range": lambda t, x, y, d: t.where(x > y, x, 1000),
    "where_condition": lambda t, x, y, d: t.where(x),
    "masked_fill": lambda t, x, y, d: x.masked_fill(x > y, 3),
    "masked_fill_float": lambda t, x, y, d: x.masked_fill(x > y, 2.5),
    "fill_": lambda t, x, y, d: x.clone().fill_(1),
    "fill_out_of_range": lambda t, x, y, d: x.clone().fill_(1000),
    "full_like": lambda t, x, y, d: t.full_like(x, 2),
    "zeros_like": lambda t, x, y, d: t.zeros_like(x),
    "ones_like_float": lambda t, x, y, d: t.ones_like(x, dtype=t.float32),
    "full_int": lambda t, x, y, d: t.full((2,), 3, dtype=x.dtype),
    "full_out_of_range": lambda t, x, y, d: t.full((2,), 1000, dtype=x.dtype),
    "full_infer": lambda t, x, y, d: t.full((2,), 3),
    "tensor_wraps": lambda t, x, y, d: t.tensor([-1, -128], dtype=x.dtype),
    "tensor_out_of_range": lambda t, x, y, d: t.tensor([1000], dtype=x.dtype),
    "tensor_negative_limit": lambda t, x, y, d: t.tensor([-300], dtype=x.dtype),
    "as_tensor": lambda t, x, y, d: t.as_tensor([1, 2], dtype=x.dtype),
    "arange": lambda t, x, y, d: t.arange(3, dtype=x.dtype),
    "setitem_int": lambda t, x, y, d: _setitem(x.clone(), 0, 2),
    "setitem_out_of_range": lambda t, x, y, d: _setitem(x.clone(), 0, 1000),
    "setitem_float": lambda t, x, y, d: _setitem(x.clone(), 0, 2.7),
    "iadd_int": lambda t, x, y, d: _iadd(x.clone(), 3),
    "iadd_float_refused": lambda t, x, y, d: _iadd(x.clone(), 0.5),
    "imul_tensor": lambda t, x, y, d: _imul(x.clone(), y),
    "itruediv_refused": lambda t, x, y, d: _itruediv(x.clone(), d),
    "add_out_float": lambda t, x, y, d: t.add(x, y, out=t.empty(8)),
    "add_out_int_from_float_refused": lambda t, x, y, d: t.add(x, 0.5,
                                                             out=t.empty(8, dtype=x.dtype)),
    "add_": lambda t, x, y, d: x.clone().add_(y),
    "mul_int_": lambda t, x, y, d: x.clone().mul_(3),
    "sub_alpha_": lambda t, x, y, d: x.clone().sub_(y, alpha=2),
    "clamp_": lambda t, x, y, d: x.clone().clamp_(0, 4),
    "masked_fill_": lambda t, x, y, d: x.clone().masked_fill_(x > y, 1),
    "div_floor_": lambda t, x, y, d: x.clone().div_(d, rounding_mode="floor"),
    "bitwise_and_": lambda t, x, y, d: x.clone().bitwise_and_(y),
    "clamp_uint8_tensor_bounds": lambda t, x, y, d: t.clamp(x, min=t.tensor(1), max=t.tensor(4)),
}


def _setitem(x, index, value):
    x[index] = value
    return x


def _iadd(x, other):
    x += other
    return x


def _imul(x, other):
    x *= other
    return x


def _itruediv(x, other):
    x /= other
    return x


SHAPES = {
    "sort": lambda t, x, y, d: x.sort(),
    "sort_descending_stable": lambda t, x, y, d: t.sort(x, descending=True, stable=True),
    "argsort": lambda t, x, y, d: x.argsort(stable=True),
    "topk": lambda t, x, y, d: t.topk(x, 3),
    "topk_smallest": lambda t, x, y, d: x.topk(2, largest=False),
    "kthvalue": lambda t, x, y, d: t.kthvalue(x, 2),
    "unique": lambda t, x, y, d: t.unique(t.cat([x, y])),
    "unique_counts": lambda t, x, y, d: t.unique(t.cat([x, x]), return_inverse=True,
                                                 return_counts=True),
    "unique_consecutive": lambda t, x, y, d: t.unique_consecutive(t.cat([x, x]).sort().values),
    "cat_same": lambda t, x, y, d: t.cat([x, y]),
    "cat_int8_int32": lambda t, x, y, d: t.cat([x, y.to(t.int32)]),
    "cat_uint8_int8": lambda t, x, y, d: t.cat([x.to(t.uint8), y.to(t.int8)]),
    "cat_bool": lambda t, x, y, d: t.cat([x, y.bool()]),
    "cat_float": lambda t, x, y, d: t.cat([x, y.float()]),
    "stack_mixed": lambda t, x, y, d: t.stack([x, y.to(t.int16)]),
    "hstack_mixed": lambda t, x, y, d: t.hstack([x, y.to(t.uint8)]),
    "flip": lambda t, x, y, d: x.flip(0),
    "roll": lambda t, x, y, d: x.roll(2),
    "reshape_t": lambda t, x, y, d: x.reshape(2, 4).t(),
    "chunk": lambda t, x, y, d: x.chunk(3),
    "repeat": lambda t, x, y, d: x.repeat(2),
    "tril": lambda t, x, y, d: x.reshape(2, 4).tril(),
    "triu": lambda t, x, y, d: t.triu(x.reshape(4, 2), 1),
    "pad": lambda t, x, y, d: t.nn.functional.pad(x, (1, 2), value=1),
    "searchsorted": lambda t, x, y, d: t.searchsorted(x.sort().values, y),
    "isin": lambda t, x, y, d: t.isin(x, y[:3]),
    "one_hot": lambda t, x, y, d: t.nn.functional.one_hot(x.long().abs() % 4, 4),
    "bucketize": lambda t, x, y, d: t.bucketize(x, y.sort().values),
}

INDEXING = {
    "index_long": lambda t, x, y, d: x[t.tensor([0, 3, 7])],
    "index_int_index": lambda t, x, y, d: x[t.tensor([0, 3, 7], dtype=t.int32)],
    "index_mask": lambda t, x, y, d: x[x > y],
    "index_by_values": lambda t, x, y, d: t.arange(10)[(x.long().abs() % 10)],
    "index_uint8_mask": lambda t, x, y, d: t.arange(8)[(x > y).to(t.uint8)],
    "gather": lambda t, x, y, d: t.gather(x.view(2, 4), 1, t.tensor([[0, 3], [2, 2]])),
    "index_select": lambda t, x, y, d: x.index_select(0, t.tensor([1, 1, 6])),
    "take": lambda t, x, y, d: t.take(x, t.tensor([5, 0])),
    "masked_select": lambda t, x, y, d: t.masked_select(x, x > y),
    "scatter": lambda t, x, y, d: t.zeros(8, dtype=x.dtype).scatter(0, t.tensor([2, 5]), x[:2]),
    "scatter_add": lambda t, x, y, d: x.scatter_add(0, t.tensor([1, 1, 4]), y[:3]),
    "index_add": lambda t, x, y, d: x.index_add(0, t.tensor([0, 0, 2]), y[:3]),
    "index_put_accumulate": lambda t, x, y, d: x.index_put((t.tensor([1, 1]),), y[:2],
                                                           accumulate=True),
    "index_fill": lambda t, x, y, d: x.index_fill(0, t.tensor([1, 4]), 1),
    "embedding": lambda t, x, y, d: t.nn.functional.embedding(
        x.long().abs() % 4, t.arange(8.0).view(4, 2)),
}

MATRIX = {
    "matmul": lambda t, x, y, d: x.view(2, 4) @ y.view(4, 2),
    "mm": lambda t, x, y, d: t.mm(x.view(4, 2), y.view(2, 4)),
    "dot": lambda t, x, y, d: t.dot(x, y),
    "mv": lambda t, x, y, d: t.mv(x.view(2, 4), y[:4]),
    "bmm": lambda t, x, y, d: t.bmm(x.view(2, 2, 2), y.view(2, 2, 2)),
    "matmul_mixed_refused": lambda t, x, y, d: x.view(2, 4) @ y.view(4, 2).float(),
    "outer": lambda t, x, y, d: t.outer(x[:3], y[:2]),
    "einsum": lambda t, x, y, d: t.einsum("i,i->", x, y),
    "tensordot": lambda t, x, y, d: t.tensordot(x.view(2, 4), y.view(4, 2), 1),
    "linear_refused": lambda t, x, y, d: t.nn.functional.linear(x.view(2, 4), y.view(2, 4)),
    "trace": lambda t, x, y, d: x[:4].view(2, 2).trace(),
    "diag": lambda t, x, y, d: t.diag(x[:3]),
    "kron": lambda t, x, y, d: t.kron(x[:2], y[:2]),
    "cross": lambda t, x, y, d: t.linalg.cross(x[:3], y[:3]),
    "det_refused": lambda t, x, y, d: t.linalg.det(x[:4].view(2, 2)),
}


MORE = {
    "quantile_refused": lambda t, x, y, d: t.quantile(x, 0.5),
    "nanmedian": lambda t, x, y, d: t.nanmedian(x),
    "addmm": lambda t, x, y, d: t.addmm(x[:4].view(2, 2), x[:4].view(2, 2), y[:4].view(2, 2)),
    "baddbmm": lambda t, x, y, d: t.baddbmm(x.view(2, 2, 2), x.view(2, 2, 2), y.view(2, 2, 2)),
    "addmv": lambda t, x, y, d: t.addmv(x[:2], x[:4].view(2, 2), y[:2]),
    "matrix_power": lambda t, x, y, d: t.linalg.matrix_power(x[:4].view(2, 2) % 3, 3),
    "heaviside": lambda t, x, y, d: t.heaviside(x, y),
    "xlogy": lambda t, x, y, d: t.xlogy(x, d),
    "ldexp": lambda t, x, y, d: t.ldexp(x, y.abs() % 3),
    "nextafter_refused": lambda t, x, y, d: t.nextafter(x, y),
    "lcm": lambda t, x, y, d: t.lcm(x % 50, y % 30),
    "fmin": lambda t, x, y, d: t.fmin(x, y),
    "round_decimals": lambda t, x, y, d: t.round(x, decimals=1),
    "repeat_interleave": lambda t, x, y, d: t.repeat_interleave(x[:3], 2),
    "rot90": lambda t, x, y, d: t.rot90(x.view(2, 4)),
    "take_along_dim": lambda t, x, y, d: t.take_along_dim(x, t.tensor([3, 1, 0])),
    "argwhere": lambda t, x, y, d: t.argwhere(x),
    "cartesian_prod": lambda t, x, y, d: t.cartesian_prod(x[:2], y[:3]),
    "combinations": lambda t, x, y, d: t.combinations(x[:4], 2),
    "index_copy": lambda t, x, y, d: x.index_copy(0, t.tensor([0, 5]), y[:2]),
    "masked_scatter": lambda t, x, y, d: x.masked_scatter(x > y, y),
    "put": lambda t, x, y, d: x.put(t.tensor([1, 6]), y[:2]),
    "cdist_refused": lambda t, x, y, d: t.cdist(x.view(2, 4), y.view(2, 4)),
    "dist_refused": lambda t, x, y, d: t.dist(x, y),
    "cross_entropy_refused": lambda t, x, y, d: t.nn.functional.cross_entropy(
        x.view(2, 4), t.tensor([0, 3])),
    "mse_loss_refused": lambda t, x, y, d: t.nn.functional.mse_loss(x, y),
    "linspace": lambda t, x, y, d: t.linspace(0, 100, 5, dtype=x.dtype),
    "new_tensor": lambda t, x, y, d: x.new_tensor([1, 2]),
    "new_full": lambda t, x, y, d: x.new_full((2,), 3),
    "new_ones": lambda t, x, y, d: x.new_ones(3),
    "type_as": lambda t, x, y, d: y.float().type_as(x),
    "to_from_float_negative": lambda t, x, y, d: t.tensor([-1.7, 2.9, 100.2]).to(x.dtype),
    "tensor_mixed_list": lambda t, x, y, d: t.tensor([True, 2, 3]),
    "tensor_float_to_int": lambda t, x, y, d: t.tensor([3.7, -2.2], dtype=x.dtype),
    "tensor_float_out_of_range": lambda t, x, y, d: t.tensor([127.5], dtype=x.dtype),
    "tensor_float_nan": lambda t, x, y, d: t.tensor([float("nan")], dtype=x.dtype),
    "full_float_negative": lambda t, x, y, d: t.full((2,), -1.0, dtype=x.dtype),
    "fill_float": lambda t, x, y, d: x.clone().fill_(-2.5),
    "setitem_float_out_of_range": lambda t, x, y, d: _setitem(x.clone(), 1, 255.5),
    "masked_fill_float_negative": lambda t, x, y, d: x.masked_fill(x > y, -1.0),
    "scalar_tensor": lambda t, x, y, d: t.scalar_tensor(3, dtype=x.dtype),
    "full_bool_value": lambda t, x, y, d: t.full((2,), True),
    "sum_empty_dims": lambda t, x, y, d: x.view(2, 4).sum((0, 1)),
    "std_unbiased_refused": lambda t, x, y, d: t.std(x, 0, unbiased=False),
    "tril_indices": lambda t, x, y, d: t.tril_indices(3, 3),
    "unique_dim": lambda t, x, y, d: t.unique(t.stack([x, x]), dim=0),
    "sort_stable_ascending": lambda t, x, y, d: t.sort(t.cat([x, y]), stable=True),
    "msort": lambda t, x, y, d: t.msort(x),
    "clamp_min_tensor": lambda t, x, y, d: t.clamp_min(x, y),
    "minimum_mixed": lambda t, x, y, d: t.minimum(x, y.to(t.int16)),
    "maximum_float_tensor": lambda t, x, y, d: t.maximum(x, y.double()),
    "bincount_weights": lambda t, x, y, d: t.bincount(x.long().abs() % 4, weights=y.float()),
    "flip_cumsum_bool": lambda t, x, y, d: (x != 0).flip(0).cumsum(0),
    "diag_embed": lambda t, x, y, d: t.diag_embed(x[:3]),
    "block_diag": lambda t, x, y, d: t.block_diag(x[:2].view(1, 2), y[:4].view(2, 2)),
    "vander": lambda t, x, y, d: t.vander(x[:3] % 5, 3),
    "diff_prepend": lambda t, x, y, d: t.diff(x, prepend=y[:1]),
    "trapezoid": lambda t, x, y, d: t.trapezoid(x),
    "logaddexp": lambda t, x, y, d: t.logaddexp(x, y),
    "mean_dim_refused": lambda t, x, y, d: x.view(2, 4).mean(1),
    "float_div_inplace_refused": lambda t, x, y, d: x.clone().div_(2),
    "floor_divide_": lambda t, x, y, d: x.clone().floor_divide_(d),
    "pow_": lambda t, x, y, d: x.clone().pow_(2),
    "abs_": lambda t, x, y, d: x.clone().abs_(),
    "neg_": lambda t, x, y, d: x.clone().neg_(),
    "remainder_": lambda t, x, y, d: x.clone().remainder_(3),
    "lshift_": lambda t, x, y, d: x.clone().__ilshift__(1),
    "result_type_float": lambda t, x, y, d: t.empty(0, dtype=t.result_type(x, 2.5)),
    "result_type_0d": lambda t, x, y, d: t.empty(0, dtype=t.result_type(x, t.tensor(1.5))),
    "promote_with_uint8": lambda t, x, y, d: t.empty(0, dtype=t.promote_types(x.dtype, t.uint8)),
    "add_0d_float16": lambda t, x, y, d: x + t.tensor(1.5, dtype=t.float16),
    "and_int8_uint8": lambda t, x, y, d: x.to(t.int8) & y.to(t.uint8),
    "lshift_by_long": lambda t, x, y, d: x.to(t.int8) << (y.long().abs() % 3),
    "where_0d_int8_uint8": lambda t, x, y, d: t.where(x > y, t.tensor(1, dtype=t.int8),
                                                      y.to(t.uint8)),
    "eq_float_tensor": lambda t, x, y, d: x == y.double(),
    "eq_minus_one": lambda t, x, y, d: x == -1,
    "ne_float_scalar": lambda t, x, y, d: x != 2.5,
    "max_pool1d_refused": lambda t, x, y, d: t.nn.functional.max_pool1d(x.view(1, 1, 8), 2),
    "max_pool2d": lambda t, x, y, d: t.nn.functional.max_pool2d(x.view(1, 1, 2, 4), 2),
    "max_pool2d_padded": lambda t, x, y, d: t.nn.functional.max_pool2d(
        x.view(1, 1, 2, 4), 2, padding=1),
    "avg_pool1d": lambda t, x, y, d: t.nn.functional.avg_pool1d(x.view(1, 1, 8), 2),
    "avg_pool2d_odd": lambda t, x, y, d: t.nn.functional.avg_pool2d(x.view(1, 1, 2, 4), 2,
                                                                   stride=1, padding=1),
    "adaptive_avg_pool2d": lambda t, x, y, d: t.nn.functional.adaptive_avg_pool2d(
        x.view(1, 1, 2, 4), 1),
    "adaptive_max_pool2d": lambda t, x, y, d: t.nn.functional.adaptive_max_pool2d(
        x.view(1, 1, 2, 4), 1),
    "max_pool3d": lambda t, x, y, d: t.nn.functional.max_pool3d(x.view(1, 1, 2, 2, 2), 2),
    "avg_pool3d": lambda t, x, y, d: t.nn.functional.avg_pool3d(x.view(1, 1, 2, 2, 2), 2),
    "pad_bool": lambda t, x, y, d: t.nn.functional.pad(x > y, (1, 1)),
    "pad_reflect_refused": lambda t, x, y, d: t.nn.functional.pad(x.view(1, 1, 8), (1, 1),
                                                                  mode="reflect"),
    "upsample_nearest": lambda t, x, y, d: t.nn.functional.interpolate(
        x.view(1, 1, 8), scale_factor=2, mode="nearest"),
    "grid_refused": lambda t, x, y, d: t.nn.functional.interpolate(
        x.view(1, 1, 8), scale_factor=2, mode="linear"),
    "interpolate_nearest": lambda t, x, y, d: t.nn.functional.interpolate(
        x.view(1, 1, 8).to(t.uint8), scale_factor=2),
    "sum_dim_dtype": lambda t, x, y, d: x.view(2, 4).sum(1, dtype=t.int16),
    "mean_dtype_dim": lambda t, x, y, d: x.view(2, 4).mean(0, dtype=t.float32),
    "std_dtype_float": lambda t, x, y, d: x.double().std(),
    "sort_bool": lambda t, x, y, d: t.sort(x > y, stable=True),
    "unique_bool": lambda t, x, y, d: t.unique(x > y),
    "cumsum_uint8": lambda t, x, y, d: x.to(t.uint8).cumsum(0, dtype=t.uint8),
    "prod_uint8": lambda t, x, y, d: d.to(t.uint8).prod(dtype=t.uint8),
    "int_div_zero_refused": lambda t, x, y, d: x // t.zeros_like(x),
    "int_mod_zero_refused": lambda t, x, y, d: x % 0,
    "true_div_zero": lambda t, x, y, d: x / 0,
    "mul_float_inplace_refused": lambda t, x, y, d: x.clone().mul_(1.5),
    "clamp_float_inplace_refused": lambda t, x, y, d: x.clone().clamp_(0.5),
    "iadd_long_into_small": lambda t, x, y, d: _iadd(x.clone(), y.long()),
    "iadd_bool_into_int": lambda t, x, y, d: _iadd(x.clone(), y.bool()),
    "isub_bool_refused": lambda t, x, y, d: x.clone().sub_(True),
    "setitem_mask_float": lambda t, x, y, d: _setitem(x.clone(), x > y, 2.5),
    "setitem_mask_tensor": lambda t, x, y, d: _setitem(x.clone(), x > y, t.tensor(7)),
    "setitem_slice_wraps_tensor": lambda t, x, y, d: _setitem(x.clone(), slice(0, 2),
                                                             t.tensor([300, -1])),
    "fill_bool_value": lambda t, x, y, d: x.clone().fill_(True),
    "copy_from_float": lambda t, x, y, d: x.clone().copy_(t.tensor([-1.7] * 8)),
    "index_add_wraps": lambda t, x, y, d: x.index_add(0, t.tensor([7, 7]), x[-2:]),
    "scatter_reduce_sum": lambda t, x, y, d: x.scatter_reduce(0, t.tensor([0, 0, 1]), y[:3],
                                                              "sum"),
    "scatter_reduce_amax": lambda t, x, y, d: x.scatter_reduce(0, t.tensor([0, 0, 1]), y[:3],
                                                               "amax", include_self=False),
    "scatter_reduce_amin_self": lambda t, x, y, d: x.scatter_reduce(0, t.tensor([0, 0, 1]),
                                                                    y[:3], "amin"),
    "python_int": lambda t, x, y, d: t.tensor(int(x[1])),
    "python_index": lambda t, x, y, d: t.tensor(list(range(10))[(x[4] if x.dtype != t.bool
                                                               else x[1]).__index__()]),
}


@pytest.mark.parametrize("fn,name", cases(UNARY))
def test_unary(fn, name):
    assert_same(fn, name)


@pytest.mark.parametrize("fn,name", cases(BINARY))
def test_binary(fn, name):
    assert_same(fn, name)


@pytest.mark.parametrize("fn,name", cases(SCALAR))
def test_scalar_and_promotion(fn, name):
    assert_same(fn, name)


@pytest.mark.parametrize("fn,name", cases(REDUCTIONS))
def test_reductions(fn, name):
    assert_same(fn, name)


@pytest.mark.parametrize("fn,name", cases(CLAMP_WHERE))
def test_clamp_where_fill_creation(fn, name):
    assert_same(fn, name)


@pytest.mark.parametrize("fn,name", cases(SHAPES))
def test_sort_unique_cat(fn, name):
    assert_same(fn, name)


@pytest.mark.parametrize("fn,name", cases(INDEXING))
def test_indexing(fn, name):
    assert_same(fn, name)


@pytest.mark.parametrize("fn,name", cases(MATRIX))
def test_matrix(fn, name):
    assert_same(fn, name)


# ----------------------------------------------------------------------------- the messages
# A refusal's class is compared above; here, that kiln's message says what PyTorch's says (the
# gist is checked against PyTorch's message too, so it cannot drift from it).

GISTS = [
    ("std of an int tensor", lambda t: t.tensor([1, 2, 3]).std(),
     "only support floating point and complex"),
    ("var of a bool tensor", lambda t: t.tensor([True, False]).var(),
     "only support floating point and complex"),
    ("uint8 tensor of 300", lambda t: t.tensor([300], dtype=t.uint8),
     "cannot be converted to type uint8"),
    ("int8 full of 128", lambda t: t.full((2,), 128, dtype=t.int8),
     "cannot be converted to type int8"),
    ("fill_ out of range", lambda t: t.zeros(2, dtype=t.uint8).fill_(256), "without overflow"),
    ("int ** negative int", lambda t: t.tensor([2, 3]) ** -1,
     "Integers to negative integer powers are not allowed"),
    ("float alpha on ints", lambda t: t.add(t.tensor([1]), t.tensor([2]), alpha=0.5),
     "alpha must not be a floating point number"),
    ("bool minus int", lambda t: t.tensor([True]) - 1, "with a bool tensor is not supported"),
    ("argmax of bool", lambda t: t.tensor([True, False]).argmax(), "does not support bool"),
    ("topk of bool", lambda t: t.tensor([True, False]).topk(1), "does not support bool"),
    ("floor of bool", lambda t: t.floor(t.tensor([True])), "not implemented for 'Bool'"),
    ("hypot of int", lambda t: t.hypot(t.tensor([3]), t.tensor([4])),
     "not implemented for 'Long'"),
    ("det of int", lambda t: t.linalg.det(t.tensor([[1, 2], [3, 4]])),
     "Expected a floating point or complex tensor as input"),
    ("mean of int", lambda t: t.tensor([1, 2]).mean(), "Input dtype must be either a floating"),
]


@pytest.mark.parametrize("what,fn,gist", GISTS, ids=[g[0] for g in GISTS])
def test_refusal_message_says_what_pytorch_says(what, fn, gist):
    with pytest.raises(Exception) as expected:
        fn(torch)
    assert gist in str(expected.value)
    with pytest.raises(expected.type) as got:
        fn(kiln)
    assert gist in str(got.value)


# ----------------------------------------------------------------------------- the reported ones

def test_int_cumprod_is_exact_int64_as_pytorch():
    # counts multiplied along a sequence: a float32 running product loses the low digits
    values = [3, -7, 11, 13, -17, 19, 23, 29, 31, 37, 41, 43, 47]
    got = kiln.tensor(values, dtype=kiln.int32).cumprod(0)
    want = torch.tensor(values, dtype=torch.int32).cumprod(0)
    assert got.dtype == kiln.int64 and want.dtype == torch.int64
    assert got.tolist() == want.tolist()


def test_accuracy_counter_stays_integer():
    # the tutorials' `correct += (pred == labels).sum().item()` and friends
    outs = {}
    for lib in (kiln, torch):
        pred = lib.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]).argmax(1)
        labels = lib.tensor([1, 0, 0])
        hits = pred == labels
        outs[lib.__name__] = (hits.sum(), hits.cumsum(0), hits.float().mean(), hits.all(),
                              (pred * 2 + 1) // 2)
    for got, want in zip(outs["kiln"], outs["torch"]):
        assert got.dtype.name == str(want.dtype).split(".")[-1]
        assert got.tolist() == want.tolist()


@pytest.mark.parametrize("value", [-1, -128, -255, 255])
def test_uint8_tensor_of_negative_wraps_as_pytorch(value):
    got = kiln.tensor([value, 7], dtype=kiln.uint8)
    want = torch.tensor([value, 7], dtype=torch.uint8)
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("name", INTS)
def test_min_of_the_dtype_minimum(name):
    # -x of the minimum is itself: a min taken as -max(-x) missed it
    def summary(lib):
        info = np.iinfo(name)
        x = lib.tensor([5, int(info.min), 0, int(info.max)], dtype=getattr(lib, name))
        return x.min().item(), x.argmin().item(), x.sort(descending=True).values.tolist()
    assert summary(kiln) == summary(torch)


@pytest.mark.parametrize("equal_nan", [False, True])
def test_isclose_as_pytorch_at_infinities_and_on_bools(equal_nan):
    # rewritten in PyTorch's order for int8's wrapped |-128| and bools; an infinite distance is
    # never close (1 and inf), equal infinities are
    inf, nan = float("inf"), float("nan")
    pairs = [([1.0, inf, nan, 1.0, -inf], [inf, inf, nan, 1.0 + 1e-7, inf]),
             ([True, False, True], [True, True, False])]
    for a, b in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = kiln.isclose(kiln.tensor(a), kiln.tensor(b), equal_nan=equal_nan)
        want = torch.isclose(torch.tensor(a), torch.tensor(b), equal_nan=equal_nan)
        assert got.tolist() == want.tolist()


@pytest.mark.parametrize("fn,name", cases(MORE))
def test_more_ops(fn, name):
    assert_same(fn, name)


def _compiled_ops(lib, x, y):
    return (x.cumprod(0), x.min(), x.argmin(), x.sort(descending=True).values, x + 1000,
            x // -3, (x > y).all(), x.amin(0), x.clamp(-2, 3))


@pytest.mark.parametrize("name", ["int8", "uint8", "int64"])
def test_compiled_integer_rules_equal_pytorch(name):
    # the fixes live in composites and literals, so a compiled function gets them too
    compiled = kiln.compile(lambda x, y: _compiled_ops(kiln, x, y))
    x, y, _ = inputs(kiln, name)
    tx, ty, _ = inputs(torch, name)
    want = _compiled_ops(torch, tx, ty)
    for _ in range(2):                      # the first call traces, the second replays
        got = compiled(x, y)
        for g, w in zip(got, want):
            assert str(g.dtype).split(".")[-1] == str(w.dtype).split(".")[-1]
            assert g.tolist() == w.tolist()


# ----------------------------------------------------------------------------- dtype pairs

PAIR_OPS = {
    "add": lambda t, a, b: a + b,
    "mul": lambda t, a, b: t.mul(a, b),
    "floor_divide": lambda t, a, b: t.floor_divide(a, b),
    "true_divide": lambda t, a, b: a / b,
    "bitwise_or": lambda t, a, b: a | b,
    "lt": lambda t, a, b: a < b,
    "maximum": lambda t, a, b: t.maximum(a, b),
    "where": lambda t, a, b: t.where(a > 1, a, b),
    "cat": lambda t, a, b: t.cat([a, b]),
    "0d_right": lambda t, a, b: a * b[0],
    "0d_left": lambda t, a, b: a[0] - b if a.dtype != t.bool and b.dtype != t.bool else a[0] & b,
}


@pytest.mark.parametrize("op", list(PAIR_OPS))
@pytest.mark.parametrize("left,right", [(a, b) for a in DTYPES for b in DTYPES])
def test_mixed_dtype_pairs_promote_as_pytorch(op, left, right):
    def run(lib):
        a = lib.tensor(nonzero_sample(left, 1)[:4], dtype=getattr(lib, left))
        b = lib.tensor(nonzero_sample(right, 2)[:4], dtype=getattr(lib, right))
        return PAIR_OPS[op](lib, a, b)
    assert_same_run(run)


# PyTorch's math functions compute integer and bool inputs in the default float dtype
# (torch.tanh(torch.arange(3)) is float32), as functions and as Tensor methods
FLOAT_MATH = """acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh sigmoid exp exp2 expm1
log log10 log1p log2 sqrt rsqrt erf erfc erfinv lgamma digamma i0 sinc logit deg2rad rad2deg
reciprocal arccos arcsin arctan""".split()
SPECIAL_MATH = """expit exp2 expm1 erf erfc erfcx erfinv i0 i0e i1 i1e ndtr ndtri log_ndtr digamma
psi gammaln sinc log1p entr logit bessel_j0 bessel_j1""".split()
# nn.functional's activations: PyTorch has no integer (or, for some, no bool) kernel of these
ACTIVATIONS = """tanh sigmoid relu relu6 hardtanh elu selu celu gelu silu mish softplus softsign
logsigmoid hardsigmoid hardswish tanhshrink softshrink hardshrink leaky_relu rrelu glu""".split()


def _small(lib, name: str):
    values = {"bool": [True, False, True, False, True, True],
              "uint8": [0, 1, 2, 3, 5, 9]}.get(name, [-3, -1, 0, 1, 2, 5])
    return lib.tensor(values, dtype=getattr(lib, name))


@pytest.mark.parametrize("name", ["int64", "int32", "uint8", "bool"])
@pytest.mark.parametrize("op", FLOAT_MATH)
def test_float_math_of_integers_promotes_as_pytorch(op, name):
    assert_same_run(lambda lib: getattr(lib, op)(_small(lib, name)))
    assert_same_run(lambda lib: getattr(_small(lib, name), op)())


@pytest.mark.parametrize("name", ["int64", "bool"])
@pytest.mark.parametrize("op", SPECIAL_MATH)
def test_special_math_of_integers_promotes_as_pytorch(op, name):
    assert_same_run(lambda lib: getattr(lib.special, op)(_small(lib, name)))


@pytest.mark.parametrize("name", ["int64", "bool"])
@pytest.mark.parametrize("op", ACTIVATIONS)
def test_activations_of_integers_as_pytorch(op, name):
    assert_same_run(lambda lib: getattr(lib.nn.functional, op)(_small(lib, name)))
