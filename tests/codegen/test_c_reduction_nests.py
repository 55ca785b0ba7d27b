"""The C renderer's loop nests for reductions over dims around the row (batch norm's sums over
N, H and W of an NCHW tensor): each pass walks a row as one loop per reduced dim with a
division-free inner loop, values read through gathers are kept in a scratch array, and a write
pass that needs no last-level sum joins the pass before it; a row output of another shape
(a max-pool's result flattened for dropout) is part of the reduction's kernel. Checked against
the IR interpreter, and a batch-norm training step compiled onto C against eager kiln and
PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F
from kiln.codegen import c as cgen
from kiln.codegen.kernel import Store, Var, lower
from kiln.ir.interpreter import interpret
from kiln.runtime import c_build
from tests.codegen.test_c_codegen import _check, _graph, _run

pytestmark = pytest.mark.skipif(c_build.compiler_problem() is not None,
                                reason="needs a working C compiler with OpenMP")


def _bn_forward(x, w, b):
    """batch norm's training statistics and normalization, then ReLU and its backward mask."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
    xhat = (x - mean) / (var + 1e-5).sqrt()
    y = (xhat * w.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)).relu()
    return mean, var, xhat, y, y <= 0


def _bn_forward_channels_last(g, w, b, shape=(3, 6, 7, 5)):
    """The same on a conv's GEMM output (N*H*W, C), read as NCHW: a strided load per row."""
    return _bn_forward(g.reshape(*shape).permute(0, 3, 1, 2), w, b)


def _bn_backward(g, m, xhat, inv):
    """batch norm's input, weight and bias gradients behind a ReLU mask (two levels of sums;
    the input gradient needs only the first)."""
    d = kiln.where(m, 0.0, g)
    gb, gw = d.sum((0, 2, 3)), (d * xhat).sum((0, 2, 3))
    dx = (d - xhat * gw.reshape(1, -1, 1, 1) / 42.0 - gb.reshape(1, -1, 1, 1) / 42.0) * inv
    return dx, gw, gb, dx.sum((0, 2, 3))


def _pool_grad_backward(gp, pm, m, xhat, inv):
    """max-pool's gradient routed by its window mask, then the ReLU and batch-norm backward:
    the pool mask and the pooled gradient are read per pixel with `h / 2`, `w % 2` digits."""
    n, c, h, w = m.shape
    up = gp.reshape(1, n, c, h // 2, w // 2)
    routed = kiln.where(pm, up, 0.0)          # (4, n, c, h/2, w/2): a window position each
    g = routed.reshape(2, 2, n, c, h // 2, w // 2).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h, w)
    return _bn_backward(g, m, xhat, inv)


CASES = [
    ("bn_forward", _bn_forward, [(3, 5, 6, 7), (5,), (5,)], []),
    ("bn_forward_channels_last", _bn_forward_channels_last, [(3 * 6 * 7, 5), (5,), (5,)], []),
    ("bn_backward", _bn_backward, [(2, 4, 3, 7), (2, 4, 3, 7), (2, 4, 3, 7), (1, 4, 1, 1)],
     [1]),
    ("pool_grad_backward", _pool_grad_backward,
     [(2, 3, 4, 4), (4, 2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 1, 1)], [1, 2]),
    ("pool_flatten_dropout", lambda x, r: kiln.where(
        r >= 0.25, F.max_pool2d(x, 2).flatten(1) * (1 / 0.75), 0.0), [(3, 4, 6, 6), (3, 36)],
     []),
    ("amax_sum_around_rows", lambda x: (x.amax((0, 2)), (x * x).sum((0, 2))),
     [(3, 2, 17, 5)], []),
]


def _arrays(shapes, masks, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(shapes):
        out.append(rng.random(s) < 0.5 if i in masks else
                   rng.standard_normal(s).astype(np.float32))
    return out


@pytest.mark.parametrize("name, fn, shapes, masks", CASES, ids=[c[0] for c in CASES])
def test_reduction_nest_matches_interpreter(name, fn, shapes, masks):
    arrays = _arrays(shapes, masks, 1)
    if name == "amax_sum_around_rows":
        arrays[0][1, 1, 3, 4] = np.nan                       # NaN wins a max
    graph = _graph(fn, arrays)
    ck = cgen.render_c(lower(graph))
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, arrays)
    got = _run(ck, lib, graph, arrays)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        _check(g, w, 2e-5, 2e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_row_nests_shared_among_threads(threads):
    """Rows big enough to be shared among threads (`#pragma omp parallel for`): each thread's
    scratch and staged arrays are its own, and the values are the interpreter's."""
    before = kiln.get_num_threads()
    kiln.set_num_threads(threads)
    try:
        shapes = [(16, 32, 4, 4), (4, 16, 32, 4, 4), (16, 32, 8, 8), (16, 32, 8, 8),
                  (1, 32, 1, 1)]
        arrays = _arrays(shapes, [1, 2], 7)
        graph = _graph(_pool_grad_backward, arrays)
        ck = cgen.render_c(lower(graph))
        assert "#pragma omp parallel for" in ck.source and "stage_" in ck.source
        lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
        want, _ = interpret(graph, arrays)
        for g, w in zip(_run(ck, lib, graph, arrays), want):
            _check(g, w, 2e-5, 2e-4)
    finally:
        kiln.set_num_threads(before)


def _inner_loops(src: str) -> list:
    """The body of each pass's innermost loop over the reduced dims."""
    out = []
    for chunk in src.split("/* pass ")[1:]:
        body = chunk.split("{", 1)[1]
        out.append(body.split("\n    }", 1)[0])
    return out


def test_nchw_rows_walk_a_loop_nest_without_division():
    """Sums over N, H, W per channel: the inner loop's NCHW loads and stores are its variable
    plus the row's and the outer loop's parts, with no division or remainder."""
    graph = _graph(_bn_forward, _arrays([(3, 5, 6, 7), (5,), (5,)], [], 2))
    src = cgen.render_c(lower(graph)).source
    assert "for (int64_t r0 = 0; r0 < 3; r0++)" in src and "< 42; " in src
    inner = _inner_loops(src)
    assert len(inner) == 3
    for body in inner:
        for ln in body.splitlines():
            if "_ptr[" in ln:
                index = ln.split("_ptr[", 1)[1]
                assert "/" not in index and "%" not in index, ln


def test_gathered_values_are_staged_kept_in_scratch_and_the_write_pass_merged():
    """The pool-routed gradient and its byte mask are read through divisions of the pixel
    index: the first pass copies them, one inner loop's worth, into local arrays its main
    loop reads in order, and keeps what it computes from them in a scratch array the later
    pass reads; the input gradient is written by the pass summing it (no third pass)."""
    shapes = [(2, 3, 4, 4), (4, 2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 1, 1)]
    graph = _graph(_pool_grad_backward, _arrays(shapes, [1, 2], 3))
    src = cgen.render_c(lower(graph)).source
    assert "scratch_" in src and "/* pass 2: reduce" in src and "/* pass 3" not in src
    first, second = _inner_loops(src)
    assert "uint8_t stage_" in first and "float stage_" in first
    # the byte gather's offset within the inner loop comes from a table made before the rows
    assert src.index("int64_t stage_offset0[") < src.index("for (int64_t row = 0")
    assert "pm_ptr[r0 * 48 + row * 16 + stage_offset0[q1]]" in first
    main = first.split("#pragma omp simd reduction", 1)[1]
    assert "= stage_" in main and "gp_ptr[" not in main and "pm_ptr[" not in main
    assert "= scratch_" in second and "gp_ptr[" not in second and "pm_ptr[" not in second


def test_row_outputs_of_another_shape_join_the_reduction():
    """max-pool, flattened, then dropout's mask and scale: one kernel, the dropout values
    stored at the row's own position."""
    graph = _graph(lambda x, r: kiln.where(r >= 0.25, F.max_pool2d(x, 2).flatten(1) * 2.0, 0.0),
                   _arrays([(3, 4, 6, 6), (3, 36)], [], 4))
    kernel = lower(graph)
    assert kernel.kept == (3, 4, 3, 3)
    assert any(st.offset == Var("row") for st in kernel.body if isinstance(st, Store))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_compiled_batch_norm_step_on_c(layout, monkeypatch):
    """conv + batch norm (training) + ReLU + max-pool, forward and backward, every group forced
    onto its C kernel: the output, the gradients and the running statistics equal eager
    kiln's and PyTorch's."""
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    wt = (rng.standard_normal((5, 3, 3, 3)) * 0.3).astype(np.float32)
    gamma = (1 + 0.1 * rng.standard_normal(5)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(5)).astype(np.float32)
    keep = rng.random((6, 5 * 4 * 4)) >= 0.25        # a dropout mask, given

    def make(lib):
        mean, var = lib.zeros(5), lib.ones(5)

        mask = lib.tensor(keep)

        def step(x, wt, gamma, beta):
            y = lib.nn.functional.conv2d(x, wt, padding=1)
            if layout == "channels_last":
                y = y.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
            y = lib.nn.functional.batch_norm(y, mean, var, gamma, beta, training=True)
            out = lib.nn.functional.max_pool2d(lib.relu(y), 2)
            h = lib.where(mask, lib.flatten(out, 1) * (1 / 0.75), 0.0)
            (h * h).sum().backward()
            return out
        return step, mean, var

    def run(fn, mean, var, to):
        ts = [to(a, i > 0) for i, a in enumerate((x, wt, gamma, beta))]
        out = fn(*ts)
        return [out.detach().numpy(), *(t.grad.numpy() for t in ts[1:]),
                mean.numpy().copy(), var.numpy().copy()]

    def kt(a, grad):
        return kiln.tensor(a, requires_grad=grad)

    def tt(a, grad):
        return torch.tensor(a, requires_grad=grad)

    # two calls each: the first compiled call traces (eagerly), the second replays the program
    step, mean, var = make(kiln)
    compiled = kiln.compile(step, backend="c")
    got = [run(compiled, mean, var, kt) for _ in range(2)]
    assert compiled.programs(), "the step did not compile"
    # the batch-norm statistics and their gradients (the step's backward) ran as C kernels
    # walking the batch without div/mod: row nests over an NCHW conv output, or sweeps down
    # the columns of a channels-last one (the pipeline's "sink permutes" leaves the conv's
    # product channels-last when nothing needs it NCHW)
    sources = [k.source for entry in compiled.entries.values()
               for k in getattr(entry.executor, "c_kernels", [])]
    assert sum("for (int64_t r0 = 0; r0 < 6; r0++)" in src or
               "for (int64_t rindex = 0; rindex < 384; rindex++)" in src
               for src in sources) >= 2
    estep, emean, evar = make(kiln)
    eager = [run(estep, emean, evar, kt) for _ in range(2)]
    tstep, tmean, tvar = make(torch)
    ref = [run(tstep, tmean, tvar, tt) for _ in range(2)]
    for g, e, r in zip(got, eager, ref):
        for a, b, t in zip(g, e, r):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(a, t, rtol=1e-3, atol=1e-3)
