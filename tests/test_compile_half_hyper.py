"""Compiled optimizer steps on float16 and bfloat16 parameters read their hyperparameters as
runtime inputs that compute as eager's numbers: compiled equals eager, no retrace per new rate.

Eager (`lr`, `momentum`, `betas` as Python numbers) converts a number per op: mul and div read
it as a float32, the other ops round it to the half dtype through float32, and addcmul_,
addcdiv_, lerp_ and add_(alpha=) compute in float32 and round once. A traced step holds those
numbers in float64 0-d inputs read on every call; each one meeting a half tensor is converted as
eager converts the number. On the NumPy target the program runs op by op as eager does: the
parameters are eager's to the bit. The C target computes a fused chain of half ops in float and
rounds once (kiln/codegen/c.py); each step then differs by about a half-precision ulp per op,
which Adam's, AdamW's and RMSprop's division by the square root of a small running average
amplifies: `C_TOL` below.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln
import kiln.nn as nn
from kiln.runtime import c_build

pytestmark = pytest.mark.skipif(c_build.compiler_problem() is not None,
                                reason="no C compiler")

OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.05)),
    "sgd_momentum": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    "nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam": ("Adam", dict(lr=0.01, eps=1e-3, weight_decay=0.01)),
    "adamw": ("AdamW", dict(lr=0.01, eps=1e-3)),
    "rmsprop": ("RMSprop", dict(lr=0.01, eps=1e-3, momentum=0.5, centered=True)),
    "adagrad": ("Adagrad", dict(lr=0.05, eps=1e-3)),
    "amsgrad": ("Adam", dict(lr=0.01, eps=1e-3, amsgrad=True)),
    "nadam": ("NAdam", dict(lr=0.01, eps=1e-3)),
    "radam": ("RAdam", dict(lr=0.01, eps=1e-3)),
    "adamax": ("Adamax", dict(lr=0.01, eps=1e-3)),
    "adadelta": ("Adadelta", dict(lr=0.5, eps=1e-3)),
}
ULP = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}     # relative rounding step
STEPS = 8


@pytest.fixture(params=["numpy", "c"])
def backend(request, monkeypatch):
    """Each test on both CPU targets; for C every kernel runs as generated."""
    if request.param == "c":
        monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    return request.param


def _build(dtype, name: str, scheduler: str):
    kiln.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)
    cls, kwargs = OPTIMIZERS[name]
    opt = getattr(kiln.optim, cls)(model.parameters(), **kwargs)
    if scheduler == "StepLR":
        sched = kiln.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8)
    else:       # (it cycles the momentum or Adam's betas too, each step a new value)
        sched = kiln.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
    return model, opt, sched


def _train(dtype, name: str, scheduler: str, inside: bool, backend: str | None):
    """STEPS steps eagerly (backend None) or compiled; the parameters, the learning rates seen
    and the compiled function."""
    model, opt, sched = _build(dtype, name, scheduler)
    x = kiln.tensor(np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32))
    x = x.to(dtype)

    def step():
        opt.zero_grad()
        loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        if inside:
            sched.step()
        return loss
    fn = step if backend is None else kiln.compile(step, backend=backend)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no eager fallback, no graph break
        for _ in range(STEPS):
            fn()
            if not inside:
                sched.step()
            lrs.append(opt.param_groups[0]["lr"])
    return [p.detach().float().numpy() for p in model.parameters()], lrs, fn


CASES = [(name, sched) for name in OPTIMIZERS for sched in ("StepLR", "OneCycleLR")
         if not (name in ("adagrad", "adadelta") and sched == "OneCycleLR")]   # (no momentum)


@pytest.mark.parametrize("inside", [True, False], ids=["sched_inside", "sched_outside"])
@pytest.mark.parametrize("name,scheduler", CASES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_step_with_scheduler_compiles_once_and_equals_eager(dtype, name, scheduler,
                                                                  inside, backend):
    dtype = getattr(kiln, dtype)
    want, eager_lrs, _ = _train(dtype, name, scheduler, inside, None)
    got, lrs, fn = _train(dtype, name, scheduler, inside, backend)
    assert lrs == eager_lrs and len(set(lrs)) == STEPS        # a new rate every step
    # one trace: each new rate (and OneCycleLR's momentum/betas) is read by the replay
    assert len(fn.entries) == 1 and all(e.program is not None for e in fn.entries.values())
    assert sum(e.calls for e in fn.entries.values()) >= STEPS - 2
    for g, w in zip(got, want):
        if backend == "numpy":
            np.testing.assert_array_equal(g, w)
        else:
            _assert_fused_close(g, w, ULP[dtype.name], name, max(lrs + [0.05]))


def _assert_fused_close(got, want, ulp: float, name: str, lr: float):
    """The C target's parameters against eager's after STEPS steps. SGD: within 4 ulps of the
    largest parameter (a fused update rounds once where eager rounds per op: about an ulp per
    step, some cancelling). The adaptive optimizers divide by the square root of a running
    average: where it is near 0, one ulp there changes that element's step by up to about the
    rate, and later steps compound it, so 3/4 of the elements are within 4 ulps (measured >=
    83%) and all within STEPS of the largest rates (each step moves a parameter by about the
    rate at most); RMSprop (its centered average of squares cancels to near 0) and NAdam
    (measured 56% and 4% within 4 ulps under OneCycleLR, where the rate reaches 0.05): the
    bound only."""
    assert np.isfinite(got).all() == np.isfinite(want).all()
    scale = float(np.abs(want).max())
    near = np.abs(got - want) <= 4 * ulp * scale
    if name.startswith(("sgd", "nesterov")):
        assert near.all(), (got, want)
        return
    assert name in ("rmsprop", "nadam") or near.mean() >= 0.75, near.mean()
    np.testing.assert_allclose(got, want, rtol=0, atol=STEPS * lr)


def _torch_params(dtype: str, cls: str, kwargs: dict, lib):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 8)).astype(np.float32)
    b0 = rng.standard_normal(4).astype(np.float32)
    x0 = rng.standard_normal((16, 8)).astype(np.float32)
    half = getattr(lib, dtype)
    w = lib.tensor(w0).to(half).requires_grad_()
    b = lib.tensor(b0).to(half).requires_grad_()
    x = lib.tensor(x0).to(half)
    opt = getattr(lib.optim, cls)([w, b], **kwargs)
    for _ in range(6):
        opt.zero_grad()
        (x @ w.t() + b).float().pow(2).mean().backward()
        opt.step()
    return [t.detach().float().numpy() for t in (w, b)]


# where kiln's eager step is torch 2.13's to the bit: float16/bfloat16 Adam, AdamW, RMSprop and
# Adagrad update with addcdiv_ as torch's do (its CPU kernel rounds the update once). Measured
# apart, by an ulp or a few, and not listed: float16 SGD with Nesterov, bfloat16 SGD with
# momentum, centered RMSprop with momentum (both dtypes).
TORCH_EXACT = [(dtype, cls, kwargs) for dtype in ("float16", "bfloat16") for cls, kwargs in (
    ("SGD", dict(lr=0.01)),
    ("SGD", dict(lr=0.01, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("Adam", dict(lr=0.01, eps=1e-3, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, eps=1e-3)),
    ("RMSprop", dict(lr=0.01, eps=1e-3)),
    ("Adagrad", dict(lr=0.01, eps=1e-3)))]


@pytest.mark.parametrize("dtype,cls,kwargs", TORCH_EXACT)
def test_half_eager_step_is_torchs(dtype, cls, kwargs):
    for g, w in zip(_torch_params(dtype, cls, kwargs, kiln), _torch_params(dtype, cls, kwargs,
                                                                          torch)):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_lifted_number_argument_of_a_half_op_is_an_input_computing_as_eager(dtype, backend):
    """A float argument that changes between calls is lifted (symbolic_number): with a half
    tensor too, not specialised, and each op takes it as its eager kernel takes the number
    (mul/div as a float32, add/sub rounded to the half dtype)."""
    half = getattr(kiln, dtype)
    x = kiln.tensor(np.random.default_rng(2).standard_normal(64).astype(np.float32)).to(half)

    def f(x, a):
        return (x * a + a) / a - a

    fn = kiln.compile(f, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a in (0.9, 0.3, 1.7, 0.1, 1e-3, 3.14159):
            got, want = fn(x, a), f(x, a)
            assert got.dtype is half
            if backend == "numpy":
                np.testing.assert_array_equal(got.float().numpy(), want.float().numpy())
            else:       # (a fused chain of 4 ops rounds once: an ulp or two of the largest)
                ulp = 2.0 ** (-10 if half is kiln.float16 else -7)
                np.testing.assert_allclose(got.float().numpy(), want.float().numpy(), rtol=0,
                                           atol=4 * ulp * float(want.float().abs().max()))
    assert len(fn.entries) <= 2         # the first value's, then the lifted argument's


def test_rmsprop_momentum_cycled_by_onecyclelr_is_read_on_every_call(backend):
    """OneCycleLR cycles RMSprop's `momentum` each step: the compiled step reads it as it reads
    the rate (it used to change Python state a replay would not, and ran eagerly). float32:
    op by op (NumPy) eager's bits; fused (C) within float32 rounding of eager's."""
    def train(compiled: bool):
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        opt = kiln.optim.RMSprop(model.parameters(), lr=0.01, momentum=0.5)
        sched = kiln.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
        x = kiln.tensor(np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32))

        def step():
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            sched.step()
            return loss
        fn = kiln.compile(step, backend=backend) if compiled else step
        momenta = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(STEPS):
                fn()
                momenta.append(opt.param_groups[0]["momentum"])
        return [p.detach().numpy() for p in model.parameters()], momenta, fn
    want, eager_momenta, _ = train(False)
    got, momenta, fn = train(True)
    assert momenta == eager_momenta and len(set(momenta)) == STEPS
    assert len(fn.entries) == 1 and all(e.program is not None for e in fn.entries.values())
    for g, w in zip(got, want):
        if backend == "numpy":
            np.testing.assert_array_equal(g, w)
        else:   # (C's float32 tanh is a polynomial a couple of ulps from NumPy's, and
            # RMSprop's first steps divide by the root of 1% of g*g: measured 6.8e-5 apart)
            np.testing.assert_allclose(g, w, rtol=0, atol=2e-4)


def test_float32_radam_compiled_step_is_eagers(backend):
    """RAdam's traced step (its rectification switch a select, the step count a tensor)
    multiplies in eager's order: on the NumPy target eager's bits once rectified (it was an ulp
    apart); fused (C) within float32 rounding."""
    def train(compiled: bool):
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        opt = kiln.optim.RAdam(model.parameters(), lr=0.01)
        x = kiln.tensor(np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32))

        def step():
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        fn = kiln.compile(step, backend=backend) if compiled else step
        for _ in range(10):         # (rectified from the 6th step)
            fn()
        return [p.detach().numpy() for p in model.parameters()]
    for g, w in zip(train(True), train(False)):
        if backend == "numpy":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
