"""Eager softmax and log_softmax on cuda tensors (kiln/runtime/softmax_gpu.py, the kernels of
kiln/codegen/softmax_triton.py): one kernel launch forward and one backward, one autograd node,
values and gradients equal to PyTorch's and to the composite's (the primitives on CuPy),
cross_entropy built on them, inf/NaN rows as the mathematics gives them, the composite still
recorded under a trace, and each kernel built for sm_90 ahead of time. GPU-marked: on a GPU
they run on CuPy; tests/test_fake_cuda.py runs them under the strict fake CUDA, the kernels in
Triton's interpreter (so the shapes stay small)."""

import sys

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.softmax_triton import MAX_BLOCK, render_softmax_kernel
from kiln.ir import dtypes as dt
from kiln.runtime import softmax_gpu
from kiln.runtime.device import cupy_module
from kiln.runtime.triton_launch import KernelCache, build_one_for_gpu
from kiln.tracer.functional import softmax_family
from tests.parity import check_op

pytestmark = pytest.mark.gpu

OPS = {"softmax": (kiln.softmax, torch.softmax),
       "log_softmax": (kiln.log_softmax, torch.log_softmax)}
LONG = MAX_BLOCK + 300          # a row reduced in passes over several blocks
CASES = [((4, 7), -1), ((3, 5, 6), 1), ((3, 5, 6), 0), ((2, 3), 0), ((5,), 0), ((2, 1, 4), 1),
         ((2, LONG), 1), ((LONG, 2), 0)]


def _composite(monkeypatch):
    """Turn the fast paths off: the op runs as its primitives (on CuPy for cuda tensors)."""
    monkeypatch.setattr(softmax_family, "_fast_input", lambda *args: None)


def _numpy(t):
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,dim", CASES)
def test_matches_torch_in_one_launch_each_way(name, dtype, shape, dim, launches):
    check_op(lambda lib, x: getattr(lib, name)(x, dim), [shape], dtype=dtype, low=-4, high=4,
             device="cuda")
    precision = np.dtype(dtype).name
    assert launches == [f"{name}_forward_{precision}", f"{name}_backward_{precision}"]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("shape,dim", [((4, 7), -1), ((3, 5, 6), 1), ((3, LONG), 1)])
def test_float16_is_computed_in_float32(name, shape, dim, launches, monkeypatch):
    """float16 as the composite computes it (in float32, rounded once), and as PyTorch does."""
    rng = np.random.default_rng(3)
    a = rng.normal(0, 3, shape).astype(np.float16)
    g = rng.normal(0, 1, shape).astype(np.float16)
    runs = []
    for fast in (True, False):
        if not fast:
            _composite(monkeypatch)
        x = kiln.tensor(a, device="cuda", requires_grad=True)
        y = OPS[name][0](x, dim)
        y.backward(kiln.tensor(g, device="cuda"))
        assert y.dtype is kiln.float16 and x.grad.dtype is kiln.float16
        runs.append((_numpy(y).astype(np.float64), _numpy(x.grad).astype(np.float64)))
    assert launches == [f"{name}_forward_float16", f"{name}_backward_float16"]
    tx = torch.tensor(a, requires_grad=True)
    ty = OPS[name][1](tx, dim)
    ty.backward(torch.tensor(g))
    want = (ty.detach().double().numpy(), tx.grad.double().numpy())
    for got, composite, ref in zip(*runs, want):
        # the output: rounded once from float32, so within one float16 rounding of both; the
        # gradient (from the float16 output, as PyTorch's) within a few
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, composite, rtol=2e-3, atol=2e-3 * scale)
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * scale)


@pytest.mark.parametrize("name", sorted(OPS))
def test_float16_with_a_float32_dtype(name, launches):
    """softmax(x, dim, dtype=float32) of a float16 tensor: the cast, then the float32 kernels;
    the gradient comes back to float16, as PyTorch's."""
    def fn(lib, x):
        return getattr(lib, name)(x, 1, dtype=lib.float32)
    check_op(fn, [(3, 5, 4)], dtype=np.float16, device="cuda")
    assert launches == [f"{name}_forward_float32", f"{name}_backward_float32"]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("shape,dim", [((6, 9), -1), ((4, 5, 3), 1), ((3, LONG), -1)])
def test_equals_the_composite_to_a_few_ulp(name, dtype, rtol, shape, dim, monkeypatch):
    """The composite's values (its primitives on CuPy) to a few ulp: only the order of the row
    sums differs (and softmax's gradient, PyTorch's rule y * (g - sum(g * y)) against the
    composite's chain of rules; where g - sum(g * y) cancels, the bound is against the largest
    value)."""
    rng = np.random.default_rng(1)
    a = rng.normal(0, 5, shape).astype(dtype)
    g = rng.normal(0, 1, shape).astype(dtype)
    runs = []
    for fast in (True, False):
        if not fast:
            _composite(monkeypatch)
        x = kiln.tensor(a, device="cuda", requires_grad=True)
        y = OPS[name][0](x, dim)
        y.backward(kiln.tensor(g, device="cuda"))
        runs.append((_numpy(y), _numpy(x.grad)))
    for got, composite in zip(*runs):
        np.testing.assert_allclose(got, composite, rtol=rtol, atol=rtol * np.abs(composite).max())


def _softmax64(a, dim, log):
    """The mathematical result in float64 over the finite entries (-inf ones: probability 0)."""
    a = a.astype(np.float64)
    shifted = a - np.max(a, axis=dim, keepdims=True)
    total = np.exp(shifted).sum(axis=dim, keepdims=True)
    return shifted - np.log(total) if log else np.exp(shifted) / total


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("length", [6, LONG])
def test_inf_and_nan_rows(name, dtype, length):
    """A row holding +inf or NaN is NaN throughout (inf / inf); -inf entries have probability
    0, and the rest of their row is the softmax of its finite entries; a row of only -inf is
    NaN (0 / 0); the gradients of the finite rows are the mathematical ones."""
    log = name == "log_softmax"
    rng = np.random.default_rng(5)
    a = rng.normal(0, 2, (6, length)).astype(dtype)
    g = rng.normal(0, 1, (6, length)).astype(dtype)
    a[1, 3] = np.inf
    a[2, 1] = np.nan
    a[3, ::2] = -np.inf
    a[4] = -np.inf
    x = kiln.tensor(a, device="cuda", requires_grad=True)
    y = OPS[name][0](x, 1)
    y.backward(kiln.tensor(g, device="cuda"))
    out, grad = _numpy(y).astype(np.float64), _numpy(x.grad).astype(np.float64)
    assert np.isnan(out[1:3]).all() and np.isnan(out[4]).all()
    finite = [0, 3, 5]
    want = _softmax64(a[finite], 1, log)
    p = np.exp(want) if log else want
    g64 = g[finite].astype(np.float64)
    want_grad = g64 - p * g64.sum(1, keepdims=True) if log else \
        p * (g64 - (g64 * p).sum(1, keepdims=True))
    tol = 5e-3 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(out[finite], want, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad[finite], want_grad, rtol=tol, atol=tol)
    assert (out[3, ::2] == (-np.inf if log else 0)).all()
    if not log:
        assert (grad[3, ::2] == 0).all()


def _cross_entropy_cases():
    rng = np.random.default_rng(7)
    weight = rng.uniform(0.5, 2, 5).astype(np.float32)
    return [
        ("plain", (6, 5), rng.integers(0, 5, 6), {}),
        ("smoothing", (6, 5), rng.integers(0, 5, 6), dict(label_smoothing=0.2)),
        ("weights", (6, 5), rng.integers(0, 5, 6), dict(weight=weight)),
        ("weights+smoothing", (6, 5), rng.integers(0, 5, 6),
         dict(weight=weight, label_smoothing=0.1)),
        ("image", (2, 5, 3, 4), rng.integers(0, 5, (2, 3, 4)), {}),
        ("sum", (7, 5), rng.integers(0, 5, 7), dict(reduction="sum")),
        ("one sample", (5,), np.array(3), {}),
    ]


@pytest.mark.parametrize("case,shape,target,kwargs", _cross_entropy_cases(),
                         ids=[c[0] for c in _cross_entropy_cases()])
def test_cross_entropy_matches_torch(case, shape, target, kwargs, launches):
    def fn(lib, x, t):
        extra = dict(kwargs)
        if "weight" in extra:
            extra["weight"] = lib.tensor(extra["weight"], device="cuda") if lib is kiln \
                else lib.tensor(extra["weight"])
        return lib.nn.functional.cross_entropy(x, t, **extra)
    check_op(fn, [shape, target], device="cuda")
    # its log_softmax: one launch each way
    assert launches.count("log_softmax_forward_float32") == 1
    assert launches.count("log_softmax_backward_float32") == 1


def test_one_launch_each_way_and_no_host_reads(monkeypatch):
    """On the (fake) device: forward, the output's allocation and one launch; backward, the
    gradient's allocation and one launch; nothing read back to the host."""
    from tests import fake_cuda
    if cupy_module() is not fake_cuda.cupy:
        pytest.skip("counts the fake CUDA's device calls and host transfers")
    rng = np.random.default_rng(2)
    for name, shape, dim in [("softmax", (4, 10), 1), ("log_softmax", (3, 4, 5), 1),
                             ("softmax", (5, 3), 0)]:
        x = kiln.tensor(rng.normal(size=shape).astype(np.float32), device="cuda",
                        requires_grad=True)
        g = kiln.tensor(rng.normal(size=shape).astype(np.float32), device="cuda")
        OPS[name][0](x, dim).backward(g)     # the kernels are built (and cached) by now
        x.grad = None
        calls, host = [], []
        real_device, real_host = fake_cuda._on_device, fake_cuda._host_access

        def on_device(run, args=(), writes=(), stream=None):
            if not getattr(fake_cuda._CURRENT, "inside", False):
                calls.append(sys._getframe(1).f_code.co_name)
            return real_device(run, args, writes, stream)
        monkeypatch.setattr(fake_cuda, "_on_device", on_device)
        monkeypatch.setattr(fake_cuda, "_host_access", lambda what: host.append(what) or
                            real_host(what))
        y = OPS[name][0](x, dim)
        forward = list(calls)
        calls.clear()
        y.backward(g)
        backward = list(calls)
        monkeypatch.undo()
        # one piece of device work each way: the kernel launch (FakeCompiledKernel.run); the
        # output's allocation (cupy.empty) launches nothing
        assert forward == ["run"], forward
        assert backward == ["run"], backward
        assert host == []
        assert y.grad_fn.name() == type(OPS[name][1](torch.zeros(2, 2, requires_grad=True),
                                                     1).grad_fn).__name__
        tx = torch.tensor(_numpy(x), requires_grad=True)
        OPS[name][1](tx, dim).backward(torch.tensor(_numpy(g)))
        np.testing.assert_allclose(_numpy(x.grad), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(OPS))
def test_transposed_sliced_and_broadcast_operands(name, launches):
    """A transposed input is read in place through its strides; a slice, a layout whose outer
    dimensions do not merge and a broadcast gradient (of a sum) are copied to C order first;
    all equal PyTorch."""
    rng = np.random.default_rng(8)
    base = rng.normal(0, 2, (6, 9, 4)).astype(np.float32)
    views = [(lambda t: t[:, 2:7, 1], 1), (lambda t: t[:, :, 2].transpose(0, 1), 0),
             (lambda t: t.permute(1, 0, 2), 2), (lambda t: t.permute(2, 0, 1), 0)]
    for view, dim in views:
        results = []
        for lib in (kiln, torch):
            src = lib.tensor(base, device="cuda") if lib is kiln else lib.tensor(base)
            x = view(src).detach().requires_grad_(True)
            y = OPS[name][0 if lib is kiln else 1](x, dim)
            y.sum().backward()               # the gradient: one value broadcast, stride 0
            results.append((_numpy(y), _numpy(x.grad)))
        for got, want in zip(*results):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert launches.count(f"{name}_forward_float32") == len(views)
    assert launches.count(f"{name}_backward_float32") == len(views)
    xp = cupy_module()
    a = xp.ones((9, 6, 4), np.float32)
    assert softmax_gpu._row_strides(a, 1) == (24, 4, 1)
    assert softmax_gpu._row_strides(a.transpose(2, 0, 1), 0) == (0, 1, 4)    # in place
    assert softmax_gpu._row_strides(a.transpose(1, 0, 2), 2) is None   # outer dims apart
    assert softmax_gpu._row_strides(a[:, 1:3], 1) is None
    assert softmax_gpu._row_strides(xp.broadcast_to(xp.ones((1, 1), np.float32), (6, 9)),
                                    1) is None


@pytest.mark.parametrize("name", sorted(OPS))
def test_second_order_gradient_matches_torch(name):
    """create_graph: PyTorch's differentiable rule, on the device."""
    a = np.random.default_rng(2).normal(0, 2, (3, 5))
    w = np.random.default_rng(3).normal(0, 1, (3, 5))
    grads = []
    for lib, fn in zip((kiln, torch), OPS[name]):
        device = {"device": "cuda"} if lib is kiln else {}
        x = lib.tensor(a, requires_grad=True, **device)
        (g,) = lib.autograd.grad((fn(x, 1) * lib.tensor(w, **device)).sum(), x,
                                 create_graph=True)
        (gg,) = lib.autograd.grad((g * g).sum(), x)
        grads.append((_numpy(g), _numpy(gg)))
    for k, t in zip(*grads):
        np.testing.assert_allclose(k, t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPS))
def test_output_written_in_place_keeps_the_mathematical_gradient(name):
    a = np.random.default_rng(4).normal(0, 1, (4, 3))
    grads = []
    for lib, fn in zip((kiln, torch), OPS[name]):
        x = lib.tensor(a, requires_grad=True, **({"device": "cuda"} if lib is kiln else {}))
        out = fn(x, 1)
        if lib is torch:                   # PyTorch refuses the write; kiln keeps a copy
            out = out.clone()
        out.mul_(3).sum().backward()
        grads.append(_numpy(x.grad))
    np.testing.assert_allclose(*grads, rtol=1e-10, atol=1e-12)


def test_no_grad_records_nothing(launches):
    x = kiln.randn(2, 3, requires_grad=True).cuda()
    with kiln.no_grad():
        y = kiln.softmax(x, -1)
    assert y.grad_fn is None and not y.requires_grad and launches == ["softmax_forward_float32"]


@pytest.mark.parametrize("name", sorted(OPS))
def test_compiled_records_the_composite_and_equals_eager(name, launches):
    fn = OPS[name][0]

    def step(x):
        return (fn(x * 2, -1) ** 2).sum()

    a = np.random.default_rng(5).normal(0, 1, (4, 6)).astype(np.float32)
    results = []
    for run in (step, kiln.compile(step, backend="triton")):
        launches.clear()
        x = kiln.tensor(a, device="cuda", requires_grad=True)
        loss = run(x)
        loss.backward()
        results.append((loss.item(), _numpy(x.grad), [k for k in launches if name in k]))
    assert results[0][2] == [f"{name}_forward_float32", f"{name}_backward_float32"]
    assert results[1][2] == []                      # the trace took the composite
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)



def test_kernels_build_for_sm90(tmp_path, nvidia_backend):
    """Each kernel (forward and backward, both kinds, each dtype, one block and several, the
    softmax dimension last or not) builds for sm_90; float32 divides correctly rounded."""
    cache = KernelCache(tmp_path)
    kernels = [
        render_softmax_kernel("softmax", False, (64, 10, 1), ((10, 1, 0),), dt.float32),
        render_softmax_kernel("softmax", True, (64, 10, 1), ((10, 1, 0), (0, 0, 0)),
                              dt.float32),
        render_softmax_kernel("log_softmax", False, (2, 5, 12), ((60, 12, 1),), dt.float16),
        render_softmax_kernel("log_softmax", True, (2, 5, 12), ((60, 12, 1), (60, 12, 1)),
                              dt.float16),
        render_softmax_kernel("softmax", False, (3, LONG, 1), ((LONG, 1, 0),), dt.float64),
        render_softmax_kernel("log_softmax", True, (3, LONG, 1), ((LONG, 1, 0), (LONG, 1, 0)),
                              dt.float32),
    ]
    for tk in kernels:
        b = build_one_for_gpu(tk, 90, cache)
        assert ".target sm_90" in b.ptx and f".entry {tk.name}" in b.ptx, tk.name
        assert b.cubin[:4] == b"\x7fELF", tk.name
    assert "div.rn.f32" in build_one_for_gpu(kernels[0], 90, cache).ptx
