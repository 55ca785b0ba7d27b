"""kiln.compile on bfloat16 (CPU): C kernels and the NumPy executor against eager and torch.

What "compiled equals eager" means here (as for float16, `kiln.codegen.c`): casts, stores and
single ops are bit-exact (each computes in float and rounds once to nearest even, as eager and
PyTorch's CPU kernels do); a fused chain is computed in float without rounding in between, so
it differs from eager's per-op rounding by up to about one bfloat16 ulp (2**-8 relative) per
op, which the tolerances below allow. The NumPy executor runs op by op as eager does.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln
import kiln.nn as nn
import kiln.nn.functional as KF
from kiln.runtime import c_build

pytestmark = pytest.mark.skipif(c_build.compiler_problem() is not None,
                                reason="no C compiler")

ULP = 2.0 ** -8          # bfloat16's rounding step relative to a value (8 significant bits)
FUSED_RTOL = 1e-2        # a few fused ops: about one ulp each


@pytest.fixture(params=["c", "numpy"])
def backend(request, monkeypatch):
    """Each test on both CPU targets; for C every kernel runs as generated (no measuring
    against NumPy, which would run some groups op by op)."""
    if request.param == "c":
        monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    return request.param


def _bf16(shape, seed=0, scale=1.0) -> kiln.Tensor:
    rng = np.random.default_rng(seed)
    return kiln.tensor((rng.standard_normal(shape) * scale).astype(np.float32)).bfloat16()


def _bits(t: kiln.Tensor) -> np.ndarray:
    return t.view(kiln.int16).numpy().view(np.uint16)


def _values(t) -> np.ndarray:
    return t.detach().float().numpy()


def _run(fn, backend: str, *args, calls: int = 3):
    """`fn(*args)` compiled for `backend`, called `calls` times (the trace, then replays);
    the last result, after checking that every call after the first replayed a program."""
    cf = kiln.compile(fn, backend=backend)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "kiln.compile")    # an eager fallback: fail
        for _ in range(calls):
            out = cf(*args)
    assert cf.entries and all(e.program is not None for e in cf.entries.values())
    if backend == "c":
        sources = _c_sources(cf)
        assert sources and any("kiln_bf16_" in s for s in sources), sources
    return out


def _c_sources(cf) -> list:
    return [k[1] for e in cf.entries.values() for ex in (e.executor, e.backward)
            if ex is not None for k in getattr(ex, "kernels", []) if k[1] is not None]


def _assert_close(got, want, rtol=FUSED_RTOL, what=""):
    """Within `rtol`, and an absolute allowance of one ulp of the largest magnitude (where an
    element is the difference of larger terms)."""
    assert got.dtype is want.dtype, (what, got.dtype, want.dtype)
    g, w = _values(got), _values(want)
    atol = ULP * float(np.abs(w).max()) if w.size else 0.0
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=what)


# ----------------------------------------------------------------------------- casts

def _float32_probes() -> np.ndarray:
    """float32 values whose rounding to bfloat16 is decided by every bit: each bfloat16 value
    exactly, each tie between neighbours (half an ulp above), just below and just above a tie
    (subnormals, the largest finite values that overflow to inf, NaNs of several payloads and
    both signs among them), and random floats."""
    high = np.arange(1 << 16, dtype=np.uint32) << 16
    bits = np.concatenate([high, high | 0x8000, high | 0x7FFF, high | 0x8001, high | 0x0001,
                           np.array([0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x807FFFFF, 0x7FC00001,
                                     0xFFFFFFFF], dtype=np.uint32)])
    rng = np.random.default_rng(0)
    random = rng.standard_normal(4096).astype(np.float32) * 10.0 ** rng.integers(-40, 38, 4096)
    return np.concatenate([bits.view(np.float32), random.astype(np.float32)])


def test_float32_to_bfloat16_is_bit_exact(backend):
    x32 = _float32_probes()
    with np.errstate(over="ignore", invalid="ignore"):
        out = _run(lambda x: x.bfloat16(), backend, kiln.tensor(x32))
    ref = torch.from_numpy(x32).bfloat16().view(torch.int16).numpy().view(np.uint16)
    got = _bits(out)
    nan = np.isnan(x32)
    # every non-NaN value as torch rounds it; a NaN stays a NaN (torch's vectorized kernel
    # makes it 0xffff, its scalar code 0x7fc0: the payload is no mathematical result)
    np.testing.assert_array_equal(got[~nan], ref[~nan])
    assert np.isnan(_values(out)[nan]).all()
    # and every bit as eager (ml_dtypes) rounds, NaNs included
    np.testing.assert_array_equal(got, _bits(kiln.tensor(x32).bfloat16()))


def test_bfloat16_to_float32_is_exact_over_every_pattern(backend):
    patterns = np.arange(1 << 16, dtype=np.uint16)
    x = kiln.tensor(patterns.view(np.int16)).view(kiln.bfloat16)
    out = _run(lambda x: x.float() * 1.0, backend, x)
    want = torch.from_numpy(patterns.view(np.int16)).view(torch.bfloat16).float().numpy()
    got = out.numpy()
    nan = np.isnan(want)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.isnan(got[nan]).all()


def test_casts_from_float64_and_integers_go_through_float32(backend):
    d = np.array([1 + 2.0 ** -8 + 2.0 ** -30, 3.0000001, -1e39, 1e-45, 2.5], dtype=np.float64)
    i = np.array([0, 1, 257, 16777217, -(2 ** 40) - 1], dtype=np.int64)
    out = _run(lambda d, i: (d.bfloat16(), i.bfloat16()), backend,
               kiln.tensor(d), kiln.tensor(i))
    for got, src in zip(out, (d, i)):
        want = torch.from_numpy(src).bfloat16().view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(_bits(got), want)


# ----------------------------------------------------------------------------- elementwise

@pytest.mark.parametrize("name,fn", [
    ("add", lambda x, y: x + y), ("sub", lambda x, y: x - y), ("mul", lambda x, y: x * y),
    ("div", lambda x, y: x / y), ("maximum", lambda x, y: kiln.maximum(x, y)),
    ("sqrt", lambda x, y: x.abs().sqrt()), ("relu", lambda x, y: KF.relu(x)),
    ("add literal", lambda x, y: x + 0.3), ("mul literal", lambda x, y: x * 0.3),
    ("where literal", lambda x, y: kiln.where(x > y, x, 0.1)),
])
def test_single_ops_are_bit_exact(backend, name, fn):
    """One op computes in float and rounds once, as eager; a number operand is taken as eager
    takes it (rounded to bfloat16, except by mul and div, which read it as float32)."""
    x, y = _bf16((40, 33), 0), _bf16((40, 33), 1)
    np.testing.assert_array_equal(_bits(_run(fn, backend, x, y)), _bits(fn(x, y)), err_msg=name)


def test_float16_number_operands_round_as_eager(backend):
    """The C kernels take float16's number operands as eager does too (x + 0.3 adds float16's
    0.30004883; before, the C kernel added float's 0.3 and rounded to a neighbour)."""
    x = kiln.tensor(np.linspace(-3, 3, 4096, dtype=np.float32)).half()
    fn = lambda x: x + 0.3          # noqa: E731
    cf = kiln.compile(fn, backend=backend)
    for _ in range(3):
        out = cf(x)
    np.testing.assert_array_equal(out.numpy(), fn(x).numpy())


def test_elementwise_chains_follow_eager(backend):
    x, y = _bf16((64, 48), 0), _bf16((64, 48), 1)

    def f(x, y):
        a = (x * 1.7 + y).sigmoid() * x - 0.3
        b = KF.gelu(x) * kiln.tanh(y)
        c = kiln.where(x > 0, x * y, -y).clamp(-1.5, 1.5)
        return a, b, c
    for got, want, what in zip(_run(f, backend, x, y), f(x, y), "abc"):
        _assert_close(got, want, what=what)


# ----------------------------------------------------------------------------- reductions

def test_reductions_follow_eager_and_torch(backend):
    x = _bf16((32, 200), 0)
    t = torch.from_numpy(x.float().numpy()).bfloat16()
    ln = nn.LayerNorm(200).bfloat16()

    def f(x):
        return (x.sum(1), x.mean(0), x.amax(1), KF.softmax(x, -1), KF.log_softmax(x, -1),
                ln(x))
    got, want = _run(f, backend, x), f(x)
    with torch.no_grad():
        tln = torch.nn.LayerNorm(200).bfloat16()
        ref = (t.sum(1), t.mean(0), t.amax(1), torch.softmax(t, -1),
               torch.log_softmax(t, -1), tln(t))
    names = ["sum", "mean", "amax", "softmax", "log_softmax", "layer_norm"]
    for g, w, r, name in zip(got, want, ref, names):
        _assert_close(g, w, what=name)
        np.testing.assert_allclose(_values(g), r.float().numpy(), rtol=FUSED_RTOL,
                                   atol=ULP * float(r.abs().max()), err_msg=name)
    # a maximum is exact
    np.testing.assert_array_equal(_bits(got[2]), _bits(want[2]))


# ----------------------------------------------------------------------------- products

def test_matmul_and_linear_round_the_float32_product_once(backend):
    x, w, b = _bf16((24, 64), 0), _bf16((48, 64), 1, 0.2), _bf16((48,), 2)
    out = _run(lambda x, w, b: (x @ w.t(), KF.linear(x, w, b)), backend, x, w, b)
    # as eager and torch: float32 products rounded to bfloat16 once (BLAS's order may move a
    # product across a rounding boundary: one ulp)
    ref = torch.from_numpy(x.float().numpy()).bfloat16() @ \
        torch.from_numpy(w.float().numpy()).bfloat16().t()
    _assert_close(out[0], x @ w.t(), rtol=ULP)
    np.testing.assert_allclose(_values(out[0]), ref.float().numpy(), rtol=ULP, atol=1e-6)
    _assert_close(out[1], KF.linear(x, w, b), rtol=2 * ULP)


# ----------------------------------------------------------------------------- models

def _mlp():
    kiln.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 5))


def _torch_twin(model) -> torch.nn.Module:
    twin = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(),
                               torch.nn.LayerNorm(64), torch.nn.Linear(64, 5))
    twin.load_state_dict({k: torch.from_numpy(v.detach().float().numpy().copy())
                          for k, v in model.state_dict().items()})
    return twin


def test_a_bfloat16_model_compiled_forward(backend):
    model = _mlp().to(kiln.bfloat16)
    x = _bf16((32, 16), 3)
    with kiln.no_grad():
        got = _run(model, backend, x)
        want = model(x)
    _assert_close(got, want, rtol=2 * FUSED_RTOL)
    twin = _torch_twin(model).to(torch.bfloat16)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x.float().numpy()).bfloat16())
    np.testing.assert_allclose(_values(got), ref.float().numpy(), rtol=2 * FUSED_RTOL,
                               atol=2 * ULP * float(ref.abs().max()))


def test_autocast_training_step_follows_eager_and_torch(backend):
    """Five SGD steps of an MLP under autocast to bfloat16 (float32 parameters): compiled,
    eager and torch's eager losses and parameters agree within a few bfloat16 ulps."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((32, 16)).astype(np.float32)
    ys = rng.integers(0, 5, 32)
    x, y = kiln.tensor(xs), kiln.tensor(ys)

    def stepper(model, opt):
        def step(x, y):
            with kiln.autocast("cpu", dtype=kiln.bfloat16):
                loss = KF.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return step
    (me, mc) = _mlp(), _mlp()
    twin = _torch_twin(me)
    eager = stepper(me, kiln.optim.SGD(me.parameters(), lr=0.1, momentum=0.9))
    compiled = kiln.compile(stepper(mc, kiln.optim.SGD(mc.parameters(), lr=0.1, momentum=0.9)),
                            backend=backend)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    tx, ty = torch.from_numpy(xs), torch.from_numpy(ys)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "kiln.compile")
        for _ in range(5):
            le, lc = eager(x, y).item(), compiled(x, y).item()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                tl = torch.nn.functional.cross_entropy(twin(tx), ty)
            topt.zero_grad()
            tl.backward()
            topt.step()
            assert lc == pytest.approx(le, rel=FUSED_RTOL)
            assert lc == pytest.approx(tl.item(), rel=FUSED_RTOL)
    assert all(e.program is not None for e in compiled.entries.values())
    for (name, p), q, r in zip(mc.named_parameters(), me.parameters(), twin.parameters()):
        scale = float(np.abs(q.detach().numpy()).max())
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=FUSED_RTOL,
                                   atol=ULP * scale, err_msg=name)
        # against torch: its bfloat16 products sum in another order (which also changes with
        # the number of threads: 4.8 ulps of the largest element apart with one thread and in
        # a pytest-xdist worker, on a bias element 1/20 of it), and five momentum steps carry
        # each rounding on
        np.testing.assert_allclose(p.detach().numpy(), r.detach().numpy(), rtol=FUSED_RTOL,
                                   atol=16 * ULP * scale, err_msg=name)


def test_bfloat16_parameters_step_as_eager(backend):
    """An optimizer step on bfloat16 parameters reads its hyperparameters as the numbers eager
    reads (momentum 0.9 as a float32, not rounded to bfloat16's 0.8984375): op by op (NumPy)
    the compiled step is eager's to the bit, fused (C) about an ulp per step from it; a new
    learning rate is read by the replay (no new trace)."""
    def build():
        model = _mlp().bfloat16()
        return model, kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(model, opt, x, y):
        loss = KF.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    x, y = _bf16((32, 16), 4), kiln.tensor(np.random.default_rng(5).integers(0, 5, 32))
    (em, eo), (cm, co) = build(), build()
    compiled = kiln.compile(step, backend=backend)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "kiln.compile")
        for i in range(5):
            if i == 3:
                for opt in (eo, co):
                    opt.param_groups[0]["lr"] = 0.05
            le, lc = step(em, eo, x, y).item(), compiled(cm, co, x, y).item()
            assert lc == pytest.approx(le, rel=FUSED_RTOL)
    assert len(compiled.entries) == 1 and \
        all(e.program is not None for e in compiled.entries.values())
    for p, q in zip(cm.parameters(), em.parameters()):
        assert p.dtype is kiln.bfloat16
        if backend == "numpy":
            np.testing.assert_array_equal(_bits(p.detach()), _bits(q.detach()))
        else:       # (about an ulp per step apart: five steps)
            _assert_close(p.detach(), q.detach(), rtol=5 * ULP)


def test_the_triton_backend_still_runs_bfloat16_eagerly():
    """kiln has no bfloat16 Triton kernels: that backend runs such functions eagerly, saying
    why, with eager's values."""
    x = _bf16((8, 8))
    f = lambda a: (a * 3.1).exp().sum()      # noqa: E731
    cf = kiln.compile(f, backend="triton")
    with pytest.warns(UserWarning, match="'triton' backend has no bfloat16"):
        got = cf(x)
    assert _bits(got) == _bits(f(x))
    with pytest.raises(kiln.compiler.GraphBreak, match="bfloat16"):
        kiln.compile(f, backend="triton", fullgraph=True)(x)
