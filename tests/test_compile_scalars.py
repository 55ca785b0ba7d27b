"""@kiln.compile with an int/float argument that changes every call: after its second value the
argument is lifted to a graph input (`kiln.tracer.symbolic_number`), so later values replay
without tracing; any use of the number other than as an op's operand keeps it keyed by value.
Every compiled result is checked against eager kiln (and the counters against torch.compile)."""

import math
import random
import warnings

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as KF
from kiln._dynamo.utils import counters


def _graphs():
    return counters["stats"]["unique_graphs"]


def _torch_graphs(fn, values, x):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(fn, backend="eager")
    outs = [compiled(x, v) for v in values]
    return torch._dynamo.utils.counters["stats"]["unique_graphs"], outs


def _step_lr(x, lr):
    return x - lr * x.sin()


def _step_int(x, i):
    return x * i + 1


@pytest.mark.parametrize("fn,values", [
    (_step_lr, [0.1 / (i + 1) for i in range(12)]),
    (_step_int, list(range(12))),
])
def test_changing_number_traces_twice_as_torch(fn, values):
    data = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    expected, torch_outs = _torch_graphs(fn, values, torch.tensor(data))
    kiln.compiler.reset()
    counters.clear()
    compiled = kiln.compile(fn)
    x = kiln.tensor(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no recompile-limit warning
        outs = [compiled(x, v) for v in values]
    assert _graphs() == expected == 2
    for v, out, ref in zip(values, outs, torch_outs):
        assert kiln.equal(out, fn(x, v))                    # bit for bit as eager kiln
        np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


def test_keyword_argument_is_lifted_too():
    counters.clear()
    compiled = kiln.compile(lambda x, *, scale: x * scale)
    x = kiln.arange(6.0)
    for s in (0.5, 1.5, 2.5, -3.0):
        assert kiln.equal(compiled(x, scale=s), x * s)
    assert _graphs() == 2


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "uint8", "int8",
                                   "bool"])
@pytest.mark.parametrize("kind", [int, float])
def test_operand_promotes_as_a_python_number(dtype, kind):
    """`x op n` compiled with n lifted has eager's dtype and bits, for every value: a float
    rounds to float32 as eager does, an int wraps into int8/uint8, `float * int tensor` is the
    default float dtype."""
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((3, 4)) * 20).astype(dtype)
    values = [kind(v) for v in (3, -7, 130, 1, 0.1, 1e-3, 2 ** 20 + 0.3)]
    values = list(dict.fromkeys(v for v in values if kind is float or v != 0))

    def f(x, n):
        if dtype == "bool":
            return (x * n, n + x, x / n, x > n)         # (no `-` with bool tensors)
        return (x * n, n + x, x - n, n - x, x / n, x > n)
    compiled = kiln.compile(f)
    x = kiln.tensor(data)
    for n in values:
        got, want = compiled(x, n), f(x, n)
        ref = f(torch.tensor(data), n)
        for g, w, r in zip(got, want, ref):
            assert g.dtype == w.dtype and str(w.dtype) == str(r.dtype).replace("torch", "kiln")
            assert kiln.equal(g, w), (n, g, w)
    assert len(compiled.entries) == 2


# ---------------------------------------------------------------------------- safety fuzz

# how a function may use its number `s` (float) or `i` (int): each line turns y into a new y;
# every one but the operands reads the value into Python (a branch, a shape, an attribute...)
_FLOAT_USES = [
    "y = y * s", "y = s - y", "y = y / (s + 3.0) if False else y + s", "y = (y > s).float() + y",
    "y = y * (s * 2)", "y = y + (1 - s)", "y = y * s ** 2",
    "y = y * 2 if s > 0.05 else y - 1", "y = y + float(s)", "y = y + int(s * 10)",
    "y = y * math.sqrt(abs(s))", "y = y[: int(abs(s) * 10) % 3 + 1]",
    "y = y + kiln.ones(y.shape[-1]) * len(range(int(abs(s) * 10) % 4))",
    "y = y * {'0.1': 3.0}.get(f'{s:.1f}', 2.0)", "y = y * {0.1: 5.0}.get(s, 1.0)",
    "y = y * (2 if isinstance(s, float) else 3)", "y = y.clamp(min=s)",
    "y = kiln.full_like(y, s) + y", "y = y.add(y, alpha=s)", "y = y.pow(s)",
    "y = kiln.where(y > 0, y, s)", "y = KF.leaky_relu(y, s)", "y = y.masked_fill(y > 0, s)",
    "y = y + kiln.tensor(s)", "y = y.lerp(y * 2, s)", "y = y.addcmul(y, y, value=s)",
    "y = kiln.clamp(y, max=s)", "y = y * round(s, 1)", "y = y + s.real",
    "y = y * np.float32(s)", "y = KF.dropout(y, p=min(abs(s), 0.9), training=False)",
    "y = y * (s if s == s else 0.0)", "y = y.sum(dim=int(s > 0.05)) if y.ndim > 1 else y",
]
_INT_USES = [
    "y = y * i", "y = i + y", "y = y - i", "y = y / (i + 1)",
    "y = y[i % 3]" , "y = y + len(range(i % 4))", "y = y.sum(dim=i % 2) if y.ndim > 1 else y",
    "y = y * 2 if i > 2 else y - 1", "y = y.roll(i, 0)", "y = y + kiln.arange(3.0).sum() * i",
    "y = y * math.factorial(abs(i) % 5)", "y = y.clamp(max=i)", "y = kiln.full_like(y, i) + y",
    "y = y * (i // 2)", "y = y * [1.0, 2.0, 3.0][i % 3]", "y = y.pow(i % 3)",
    "y = y.reshape(-1)[: i % 5 + 1]", "y = y + f'{i}'.count('1')", "y = y * int(i)",
    "y = y * (2 if isinstance(i, int) else 3)", "y = y + i.bit_length()",
]


def _fuzz_function(uses: list, rng: random.Random, name: str):
    lines = rng.sample(uses, rng.randint(1, 3))
    arg = "s" if uses is _FLOAT_USES else "i"
    source = f"def {name}(x, {arg}):\n    y = x\n" + "".join(f"    {line}\n" for line in lines) \
        + "    return y\n"
    namespace = {"kiln": kiln, "KF": KF, "math": math, "np": np}
    exec(compile(source, f"<fuzz {name}>", "exec"), namespace)
    return namespace[name], source


@pytest.mark.parametrize("seed", range(24))
def test_fuzz_compiled_equals_eager_for_every_value(seed):
    """Random small functions using the number in the ways above, compiled against eager over
    values that change branch outcomes, shapes and attributes: never a stale value."""
    rng = random.Random(seed)
    uses = _FLOAT_USES if seed % 2 == 0 else _INT_USES
    fn, source = _fuzz_function(uses, rng, f"fuzz{seed}")
    if uses is _FLOAT_USES:
        values = [0.1, 0.2, 0.03, 0.1, -0.4, 2.5, 0.06, 0.0, 0.2]
    else:
        values = [1, 2, 0, 5, 3, 4, -1, 7, 2, 6]
    rng.shuffle(values)
    x = kiln.tensor(np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32))
    compiled = kiln.compile(fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for v in values:
            got, want = compiled(x, v), fn(x, v)
            assert got.shape == want.shape and got.dtype == want.dtype, (source, v)
            assert np.allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6,
                               equal_nan=True), (source, v, got, want)
