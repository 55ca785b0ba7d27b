"""The C renderer's unrolled form of short reductions (pooling windows, a few classes): each
pass written out per element inside a loop nest over the rows, checked against the IR
interpreter and, through `kiln.compile`, against eager kiln and PyTorch's max-pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F
from kiln.codegen import c as cgen
from kiln.codegen.kernel import lower
from kiln.ir.interpreter import interpret
from kiln.runtime import c_build
from tests.codegen.test_c_codegen import _check, _graph, _run


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = kiln.get_num_threads()
    kiln.set_num_threads(request.param)
    yield request.param
    kiln.set_num_threads(before)


@pytest.mark.parametrize("k,channels_last,parallel_min", [
    (2, False, cgen.PARALLEL_MIN), (2, True, cgen.PARALLEL_MIN), (3, False, cgen.PARALLEL_MIN),
    (3, True, cgen.PARALLEL_MIN), (4, True, cgen.PARALLEL_MIN), (2, False, 0), (4, True, 0)])
def test_unrolled_pool_matches_interpreter(k, channels_last, parallel_min, threads):
    """bias + ReLU + max_pool2d's forward (the NaN-propagating window max, the first-max mask,
    the pooled values) and the ReLU mask its backward keeps, as one kernel; NaN and ties
    included. With parallel_min=0 the rows are shared among threads, each running its part
    of the outer loop in a function of its own."""
    rng = np.random.default_rng(k)
    shape = (2, 3 * k, 2 * k, 5) if channels_last else (2, 5, 3 * k, 2 * k)
    x = rng.integers(-3, 4, shape).astype(np.float32)      # ties inside windows
    x.flat[rng.integers(0, x.size, 6)] = np.nan
    b = rng.standard_normal(5).astype(np.float32)

    def pool(x, b):
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        r = (x + b.reshape(1, 5, 1, 1)).relu()
        return F.max_pool2d(r, k), r <= 0
    graph = _graph(pool, [x, b])
    kernel = lower(graph)
    assert kernel.reduced_numel == k * k <= cgen.UNROLL_LIMIT
    ck = cgen.render_c(kernel, parallel_min=parallel_min)
    assert "rindex" not in ck.source and f"{k * k} elements */" in ck.source
    # no element is selected from a load (NO_IF_CONVERSION): the rows loop vectorizes
    assert "no-tree-loop-if-convert" not in ck.source
    threaded = f"{ck.name}_rows(" in ck.source
    assert threaded == (parallel_min == 0) == ("#pragma omp parallel for" in ck.source)
    # NCHW: the pooled rows' last coordinate (2 columns) is too short for a vector, so one
    # loop runs over every row
    one_loop = f"for (int64_t row = 0; row < {kernel.numel}; row++)" in ck.source
    assert one_loop == (not channels_last and not threaded)
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, [x, b])
    for g, w in zip(_run(ck, lib, graph, [x, b]), want):
        _check(g, w, 1e-6, 1e-6)


def test_if_conversion_off_only_where_a_loaded_element_is_selected():
    """GCC 12 miscompiles an unrolled kernel that selects elements loaded per row
    (`masked_fill(m, c)` reads x only where m is false) unless loop if-conversion is off; a
    select of values the kernel computes, or of a value loaded once for all rows, keeps it."""
    rng = np.random.default_rng(5)
    s, m = rng.standard_normal((16, 4)), rng.random((16, 4)) > 0.5

    def fill_then_all(s, m):
        x = s.masked_fill(m, -5.0)
        return x.masked_fill((x == -5.0).all(dim=-1, keepdim=True), 0.0)

    def ranks_then_relu(s):
        ranks = kiln.arange(4, 0, -1, dtype=kiln.uint8)
        return kiln.where(s.relu() > 0, ranks, 0).amax(-1), s.relu().amax(-1)
    cases = [(fill_then_all, [s, m], True), (ranks_then_relu, [s], False)]
    for fn, arrays, off in cases:
        graph = _graph(fn, arrays)
        ck = cgen.render_c(lower(graph))
        assert "4 elements */" in ck.source
        assert ("no-tree-loop-if-convert" in ck.source) == off, fn.__name__
        lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
        want, _ = interpret(graph, arrays)
        for g, w in zip(_run(ck, lib, graph, arrays), want):
            _check(g, w, 0, 0)


@pytest.mark.parametrize("op", ["sum", "prod", "amax", "softmax"])
def test_unrolled_row_reductions(op, threads):
    """Short trailing rows (a softmax over 10 classes and friends) take the unrolled form too."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 10)).astype(np.float32)
    x[3, 4] = np.nan
    x[5] = -np.inf
    fn = {"sum": lambda x: x.sum(-1), "prod": lambda x: (x * 0.5 + 1.0).prod(-1),
          "amax": lambda x: x.amax(-1), "softmax": lambda x: F.softmax(x, -1)}[op]
    graph = _graph(fn, [x])
    ck = cgen.render_c(lower(graph))
    assert "rindex" not in ck.source
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, [x])
    for g, w in zip(_run(ck, lib, graph, [x]), want):
        _check(g, w, 1e-5, 1e-6)


@pytest.mark.parametrize("k,channels_last", [(2, False), (4, True), (3, True)])
def test_compiled_conv_pool_step_on_c(k, channels_last, threads, monkeypatch):
    """A conv + bias + ReLU + max-pool forward and backward, every group forced onto its C
    kernel: values and gradients equal eager kiln's and PyTorch's."""
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    rng = np.random.default_rng(k)
    x = rng.standard_normal((3, 4, 13, 13)).astype(np.float32)
    wt = rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.3
    bias = rng.standard_normal(6).astype(np.float32)

    def step(x, wt, bias):
        y = F.conv2d(x, wt, bias)
        if channels_last:
            y = y.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        out = F.max_pool2d(F.relu(y), k)
        (out * out).sum().backward()
        return out

    def run(fn):
        ts = [kiln.tensor(a, requires_grad=i > 0) for i, a in enumerate((x, wt, bias))]
        out = fn(*ts)
        return [out.detach().numpy(), ts[1].grad.numpy(), ts[2].grad.numpy()]

    compiled = kiln.compile(step, backend="c")
    got = [run(compiled) for _ in range(2)]
    eager = run(step)
    tx, tw, tb = (torch.tensor(a, requires_grad=i > 0) for i, a in enumerate((x, wt, bias)))
    tout = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(tx, tw, tb)), k)
    (tout * tout).sum().backward()
    ref = [tout.detach().numpy(), tw.grad.numpy(), tb.grad.numpy()]
    for g in got:
        for a, e, t in zip(g, eager, ref):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(a, t, rtol=1e-4, atol=1e-4)


def test_threaded_pool_window_at_cnn_batch_64(threads, monkeypatch):
    """The batch-64 CNN's bias + ReLU + 4x4 max-pool over a channels-last GEMM output
    (64 x 64 x 24 x 24), forward and backward, compiled with every group on its C kernel: the
    pooling kernel takes the threaded unrolled form, and values and gradients equal eager
    kiln's and PyTorch's."""
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    rng = np.random.default_rng(64)
    gemm = rng.standard_normal((64 * 24 * 24, 64)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32) * 0.1

    def step(gemm, bias):
        y = gemm.reshape(64, 24, 24, 64).permute(0, 3, 1, 2)
        out = F.max_pool2d(F.relu(y + bias.reshape(1, 64, 1, 1)), 4)
        (out * out).sum().backward()
        return out

    def run(fn):
        ts = [kiln.tensor(a, requires_grad=True) for a in (gemm, bias)]
        out = fn(*ts)
        return [out.detach().numpy(), ts[0].grad.numpy(), ts[1].grad.numpy()]

    compiled = kiln.compile(step, backend="c")
    got = [run(compiled) for _ in range(2)]     # the first call traces, the second replays
    sources = [src for entry in compiled.entries.values()
               for _, src, *_ in entry.executor.kernels if src]
    # built with loop if-conversion (its selects pick computed values), so its rows vectorize
    assert any("max_pool2d" in src and "_rows(" in src and
               "no-tree-loop-if-convert" not in src for src in sources)
    eager = run(step)
    tg, tb = (torch.tensor(a, requires_grad=True) for a in (gemm, bias))
    y = tg.reshape(64, 24, 24, 64).permute(0, 3, 1, 2)
    tout = torch.nn.functional.max_pool2d(torch.relu(y + tb.reshape(1, 64, 1, 1)), 4)
    (tout * tout).sum().backward()
    ref = [tout.detach().numpy(), tg.grad.numpy(), tb.grad.numpy()]
    for g in got:
        for a, e, t in zip(g, eager, ref):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a, t, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,stride,padding", [(3, 2, 1), (3, 1, 0), (2, 1, 0)])
def test_overlapping_pool_step_builds_on_c(k, stride, padding, threads, monkeypatch, recwarn):
    """Overlapping windows (a ResNet stem's 3x3/2 pool with padding 1, 3x3/1, 2x2/1): the
    backward keeps the window mask as one slice per element, which the unrolled kernel
    stores from row-scope copies (`v61_1` .. `v61_9`) beside the mask's unrolled elements.
    Their C names once collided (`redefinition of 'v_v61_4'`), and the whole step fell back
    to NumPy with a warning; now it builds, and output and gradient equal eager kiln's and
    PyTorch's."""
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    x[:, :, ::3, :] = np.round(x[:, :, ::3, :])         # ties inside windows
    s = rng.uniform(0.5, 1.5, 4).astype(np.float32)

    def step(x, scale):
        out = F.max_pool2d((x * scale.reshape(1, 4, 1, 1)).relu(), k, stride, padding)
        (out * out).sum().backward()
        return out

    def run(fn):
        xs, scale = kiln.tensor(x), kiln.tensor(s, requires_grad=True)
        out = fn(xs, scale)
        return [out.detach().numpy(), scale.grad.numpy()]

    compiled = kiln.compile(step, backend="c")
    got = [run(compiled) for _ in range(2)]     # the first call traces, the second replays
    failed = [w for w in recwarn if "building the C kernels" in str(w.message)]
    assert not failed, str(failed[0].message)
    sources = [src for entry in compiled.entries.values()
               for _, src, *_ in entry.executor.kernels if src]
    assert any(f"{k * k} elements */" in src for src in sources)
    eager = run(step)
    tx, ts = torch.tensor(x), torch.tensor(s, requires_grad=True)
    tout = torch.nn.functional.max_pool2d(torch.relu(tx * ts.reshape(1, 4, 1, 1)), k, stride,
                                          padding)
    (tout * tout).sum().backward()
    ref = [tout.detach().numpy(), ts.grad.numpy()]
    for g in got:
        for a, e, t in zip(g, eager, ref):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a, t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch,size,stride,padding,dilation,groups,pool", [
    (1, (11, 14), 2, 1, 1, 1, (2, 3)),
    (2, (13, 12), 1, 2, 2, 2, 3),
    (3, (10, 15), (2, 1), (1, 0), (1, 2), 1, 2)])
def test_compiled_conv_pool_steps_of_odd_shapes_on_c(batch, size, stride, padding, dilation,
                                                     groups, pool, monkeypatch):
    """Convolutions of stride 2, padding, dilation, groups, batch 1 and non-square images,
    then bias + ReLU + a max-pool of non-square or overlapping windows, every group forced onto
    its C kernel (the pool's unrolled kernel): values and all three gradients equal eager
    kiln's and PyTorch's."""
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 4) + size).astype(np.float32)
    wt = rng.standard_normal((6, 4 // groups, 3, 3)).astype(np.float32) * 0.3
    bias = rng.standard_normal(6).astype(np.float32)
    pool_stride = 2 if pool == 3 else None

    def step(lib, x, wt, bias):
        y = lib.nn.functional.conv2d(x, wt, bias, stride, padding, dilation, groups)
        out = lib.nn.functional.max_pool2d(lib.relu(y), pool, pool_stride)
        (out * out).sum().backward()
        return out

    def run(lib, fn):
        ts = [lib.tensor(a, requires_grad=True) for a in (x, wt, bias)]
        out = fn(*ts)
        return [out.detach().numpy()] + [t.grad.numpy() for t in ts]

    compiled = kiln.compile(lambda *ts: step(kiln, *ts), backend="c")
    got = [run(kiln, compiled) for _ in range(2)]   # the first call traces, the second replays
    sources = [src for entry in compiled.entries.values()
               for _, src, *_ in entry.executor.kernels if src]
    assert any("max_pool2d" in src and " elements */" in src for src in sources)
    eager = run(kiln, lambda *ts: step(kiln, *ts))
    ref = run(torch, lambda *ts: step(torch, *ts))
    for g in got:
        for a, e, t in zip(g, eager, ref):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(a, t, rtol=1e-4, atol=1e-4)
