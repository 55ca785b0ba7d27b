"""Eager max_pool2d on cuda tensors (kiln/tracer/functional/pooling.py, kiln/runtime/pool_gpu.py,
kiln/codegen/pool_triton.py): one kernel launch forward and one backward, equal to PyTorch's
max_pool2d and to kiln's composite on the CPU (values, indices, gradients, double backward)
for overlapping windows, padding, dilation, ceil_mode, ties and NaN; a trace still records the
composite (compiled == eager); each kernel builds ahead of time for sm_90. GPU-marked:
tests/test_fake_cuda.py runs them under the strict fake CUDA, the kernels in Triton's
interpreter (so the shapes stay small)."""

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F
from kiln.codegen import pool_triton
from kiln.ir import dtypes as dt
from kiln.runtime import cupy_backend
from kiln.runtime.device import cupy_module
from kiln.runtime.triton_launch import KernelCache, build_one_for_gpu
from tests.parity import check_op

pytestmark = pytest.mark.gpu

FORWARD, BACKWARD, GATHER = "max_pool2d_forward", "max_pool2d_backward", "max_pool2d_gather"

# (input shape, max_pool2d's arguments): non-overlapping, overlapping with padding, dilation
# with ceil_mode, rectangular everything, a stride past the kernel, a 3-D (unbatched) input
GEOMETRIES = [
    ((2, 3, 8, 8), dict(kernel_size=2)),
    ((2, 2, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 3, 9, 8), dict(kernel_size=3, stride=1, dilation=2, ceil_mode=True)),
    ((2, 2, 7, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True)),
    ((1, 2, 9, 9), dict(kernel_size=2, stride=3)),
    ((3, 6, 5), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 9, 8), dict(kernel_size=(5, 4), stride=(2, 3), padding=2)),   # a looped window
]


@pytest.fixture(autouse=True)
def _fresh_launchers(monkeypatch, tmp_path):
    """No launchers prepared by earlier tests, kernels cached in the test's own folder."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cupy_backend, "_LAUNCHERS", {})


def _pool(kwargs, indices=False):
    return lambda lib, x: lib.nn.functional.max_pool2d(x, **kwargs, return_indices=indices)


def _cpu_composite(a, kwargs, g):
    """kiln's composite on the CPU: (output, indices, input gradient for upstream `g`)."""
    x = kiln.tensor(a, requires_grad=True)
    out, idx = F.max_pool2d(x, **kwargs, return_indices=True)
    out.backward(kiln.tensor(g))
    return out.detach().numpy(), idx.numpy(), x.grad.numpy()


@pytest.mark.parametrize("shape,kwargs", GEOMETRIES, ids=[str(g[1]) for g in GEOMETRIES])
def test_forward_indices_and_gradient_equal_torch_and_the_composite(shape, kwargs, launches):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape).astype(np.float32)
    check_op(_pool(kwargs, indices=True), [a], device="cuda")
    assert launches == [FORWARD, BACKWARD]          # the fast path ran, once each way
    # and the CPU composite's values bitwise, its gradient to rounding (sums in another order)
    x = kiln.tensor(a, device="cuda", requires_grad=True)
    out, idx = F.max_pool2d(x, **kwargs, return_indices=True)
    g = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    out.backward(kiln.tensor(g, device="cuda"))
    want_out, want_idx, want_grad = _cpu_composite(a, kwargs, g)
    np.testing.assert_array_equal(out.detach().cpu().numpy(), want_out)
    np.testing.assert_array_equal(idx.cpu().numpy(), want_idx)
    np.testing.assert_allclose(x.grad.cpu().numpy(), want_grad, rtol=1e-6, atol=1e-6)


def test_ties_go_to_the_first_maximum(launches):
    # a ReLU'd input: most windows are all zeros, whose gradient goes to the first of them
    a = np.maximum(np.random.default_rng(2).standard_normal((2, 3, 8, 7)), 0).astype(np.float32)
    a[0, 0, :4, :4] = 1.5                           # ties among positive values too
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1)):
        check_op(_pool(kwargs, indices=True), [a], device="cuda")
    assert launches == [FORWARD, BACKWARD] * 2


def test_nan_counts_as_the_maximum_and_propagates(launches):
    a = np.random.default_rng(3).standard_normal((1, 2, 7, 7)).astype(np.float32)
    a[0, 0, 3, 3] = np.nan                          # inside several overlapping windows
    a[0, 1, 0, 0] = np.nan                          # on the padded border
    kwargs = dict(kernel_size=3, stride=2, padding=1)
    out = check_op(_pool(kwargs, indices=True), [a], device="cuda")
    assert np.isnan(out[0].detach().cpu().numpy()).sum() == 4 + 1
    assert launches == [FORWARD, BACKWARD]
    # two NaNs in one window: the first one is chosen, as the composite chooses it
    a[0, 0, 3, 4] = np.nan
    x = kiln.tensor(a, device="cuda", requires_grad=True)
    got, idx = F.max_pool2d(x, **kwargs, return_indices=True)
    g = np.ones(tuple(got.shape), np.float32)
    got.backward(kiln.tensor(g, device="cuda"))
    want_out, want_idx, want_grad = _cpu_composite(a, kwargs, g)
    np.testing.assert_array_equal(got.detach().cpu().numpy(), want_out)
    np.testing.assert_array_equal(idx.cpu().numpy(), want_idx)
    np.testing.assert_array_equal(x.grad.cpu().numpy(), want_grad)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_half_and_double_equal_torch(dtype, launches):
    check_op(_pool(dict(kernel_size=3, stride=2, padding=1)), [(2, 3, 7, 6)], dtype=dtype,
             device="cuda")
    assert launches == [FORWARD, BACKWARD]


def test_max_pool1d_takes_the_fast_path_too(launches):
    check_op(lambda lib, x: lib.nn.functional.max_pool1d(x, 3, stride=2, padding=1,
                                                         return_indices=True), [(2, 3, 9)],
             device="cuda")
    assert launches == [FORWARD, BACKWARD]


def test_channels_last_and_transposed_layouts_are_read_in_place(launches):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    kwargs = dict(kernel_size=3, stride=2, padding=1)
    x = kiln.tensor(a.transpose(0, 2, 3, 1).copy(), device="cuda",
                    requires_grad=True)             # (N, H, W, C) memory
    out = F.max_pool2d(x.permute(0, 3, 1, 2), **kwargs)
    g = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    # an upstream gradient in a transposed layout
    g_t = kiln.tensor(g.transpose(0, 1, 3, 2).copy(), device="cuda").transpose(2, 3)
    out.backward(g_t)
    t = torch.tensor(a, requires_grad=True)
    want = torch.nn.functional.max_pool2d(t, **kwargs)
    want.backward(torch.tensor(g))
    np.testing.assert_array_equal(out.detach().cpu().numpy(), want.detach().numpy())
    np.testing.assert_allclose(x.grad.cpu().numpy(), t.grad.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-6, atol=1e-6)
    # the strides are the kernels' constants: no copy of the image or the gradient first
    assert launches == [FORWARD, BACKWARD]


def test_in_place_writes_after_the_pooling_keep_its_gradient(launches):
    # the node reads only its window positions: neither a ReLU written into the output (as
    # `F.relu(..., inplace=True)` does) nor a later write into the input changes the gradient
    a = np.random.default_rng(8).standard_normal((2, 3, 6, 6)).astype(np.float32)
    x = kiln.tensor(a, device="cuda", requires_grad=True)
    h = x * 1.0
    out = F.max_pool2d(h, 2)
    out.relu_()
    h.zero_()
    out.sum().backward()
    t = torch.tensor(a, requires_grad=True)
    torch.nn.functional.max_pool2d(t, 2).relu().sum().backward()
    np.testing.assert_array_equal(x.grad.cpu().numpy(), t.grad.numpy())
    assert launches == [FORWARD, BACKWARD]


def test_one_kernel_launch_forward_and_one_backward(monkeypatch):
    from tests import fake_cuda
    if cupy_module() is not fake_cuda.cupy:
        pytest.skip("counts the fake CUDA's device calls")
    rng = np.random.default_rng(5)
    x = kiln.tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), device="cuda",
                    requires_grad=True)
    g = kiln.tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), device="cuda")
    calls = []
    real, empty = fake_cuda._on_device, fake_cuda.cupy.empty

    def on_device(run, args=(), writes=(), stream=None):
        if not getattr(fake_cuda._CURRENT, "inside", False):
            calls.append("launch" if "FakeCompiledKernel" in run.__qualname__ else "call")
        return real(run, args, writes, stream)

    def allocate(*args, **kwargs):
        calls.append("empty")       # an allocation: no device work
        return empty(*args, **kwargs)
    monkeypatch.setattr(fake_cuda, "_on_device", on_device)
    monkeypatch.setattr(fake_cuda.cupy, "empty", allocate)
    for _ in range(2):          # the first call renders and prepares, the second only launches
        x.grad = None           # (accumulating into a .grad is an add of its own)
        calls.clear()
        out = F.max_pool2d(x, 2)
        # the output and the window positions allocated (host work on a GPU), one launch
        assert calls == ["empty", "empty", "launch"]
        calls.clear()
        out.backward(g)
        assert calls == ["empty", "launch"]
    assert out.grad_fn.name() == "MaxPool2DWithIndicesBackward0"     # PyTorch's name


def test_double_backward_gathers_the_grad_grad_at_the_chosen_pixels(launches):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((2, 2, 6, 7)).astype(np.float64)
    g = rng.standard_normal((2, 2, 3, 4))
    v = rng.standard_normal(a.shape)
    kwargs = dict(kernel_size=3, stride=2, padding=1)

    def second_order(lib, dev):
        x = lib.tensor(a, requires_grad=True, **dev)
        gout = lib.tensor(g, requires_grad=True, **dev)
        out = lib.nn.functional.max_pool2d(x, **kwargs)
        vt = lib.tensor(v, requires_grad=True, **dev)
        (gx,) = lib.autograd.grad(out, x, gout, create_graph=True)
        (ggout,) = lib.autograd.grad((gx * vt).sum(), gout, create_graph=True)
        # and once more: ggout is v gathered, whose gradient is the backward again
        (third,) = lib.autograd.grad((ggout ** 2).sum(), vt)
        return gx, ggout, third
    want = second_order(torch, {})
    got = second_order(kiln, dict(device="cuda"))
    for k, t in zip(got, want):
        np.testing.assert_allclose(k.detach().cpu().numpy(), t.detach().numpy(), rtol=1e-12,
                                   atol=1e-12)
    assert launches == [FORWARD, BACKWARD, GATHER, BACKWARD]


def test_cpu_and_traces_keep_the_composite(launches):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    w = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    kwargs = dict(kernel_size=3, stride=2, padding=1)
    cpu = kiln.tensor(a)
    F.max_pool2d(cpu, **kwargs)
    assert launches == []                           # the CPU runs the composite

    def step(x, weight):
        loss = (F.max_pool2d(x, **kwargs) * weight).sum()
        loss.backward()
        return loss.detach()
    xs = [kiln.tensor(a, device="cuda", requires_grad=True) for _ in range(2)]
    weight = kiln.tensor(w, device="cuda")
    compiled = kiln.compile(step)
    for call in range(2):
        want = step(xs[0], weight)
        got = compiled(xs[1], weight)
        np.testing.assert_allclose(got.cpu().numpy(), want.cpu().numpy(), rtol=1e-5)
        np.testing.assert_allclose(xs[1].grad.cpu().numpy(), xs[0].grad.cpu().numpy(),
                                   rtol=1e-6, atol=1e-6)
    # eager took the fast path each call; the traced call recorded the composite, so the
    # compiled program launches its own fused kernels, never these
    assert launches.count(FORWARD) == 2 and launches.count(BACKWARD) == 2
    ops = {node.op for entry in compiled.entries.values() for node in entry.graph.nodes}
    assert {"max", "where", "sum"} <= ops
    assert not ops & {"max_pool2d_with_indices", "max_pool2d_with_indices_backward"}


def test_each_kernel_builds_for_sm90(tmp_path):
    pytest.importorskip("triton")
    geometry = ((4, 4), (3, 3), (2, 2), (1, 1), (1, 1))
    kernels = [pool_triton.render_forward((2, 3, 8, 8), *geometry, dtype, (192, 64, 8, 1),
                                          indices)
               for dtype in (dt.float16, dt.float32, dt.float64) for indices in (False, True)]
    looped = ((2, 2), (5, 5), (3, 3), (2, 2), (1, 1))      # 25 window positions: a loop
    for g in (geometry, looped):
        kernels += [pool_triton.render_backward((2, 3, 8, 8), *g, dt.float32, (48, 16, 4, 1)),
                    pool_triton.render_gather((2, 3, 8, 8), *g, dt.float32, (192, 64, 8, 1))]
    kernels.append(pool_triton.render_forward((2, 3, 8, 8), *looped, dt.float32,
                                              (192, 64, 8, 1)))
    assert sum("in range(KH * KW)" in tk.source for tk in kernels) == 2     # (gather: none)
    cache = KernelCache(tmp_path)
    for tk in kernels:
        build = build_one_for_gpu(tk, 90, cache)
        assert build.cubin and f".entry {tk.name}" in build.ptx, tk.name
