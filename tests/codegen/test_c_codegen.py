"""Generated C kernels: built with the system compiler they equal the IR interpreter on the
shared cases, on NumPy's special values (NaN, inf, signed zero, integer division by zero) and on
sizes that take the multi-threaded paths; the source is readable; the float32 math helpers stay
within a few ulps of float64 over wide ranges."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

import kiln
import kiln.nn.functional as F
from kiln.codegen import c as cgen
from kiln.codegen.kernel import LoweringError, lower
from kiln.compiler import trace
from kiln.ir.interpreter import interpret
from kiln.runtime import c_build
from tests.codegen.cases import BY_NAME, CASES

pytestmark = pytest.mark.skipif(c_build.compiler_problem() is not None,
                                reason="needs a working C compiler with OpenMP")

NAN, INF = np.nan, np.inf
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, 3.0, -7.0, 1e-40, -1e-40,
                    1e-30, 88.5, 89.0, -88.0, -104.0, -110.0, 1e30, -1e30, INF, -INF, NAN,
                    0.625, -0.625, 0.34, 3.4e38], dtype=np.float32)


def _graph(fn, arrays):
    return trace(fn, *[kiln.tensor(a) for a in arrays]).graphs[0]


# (name, fn, input arrays): values chosen to hit NumPy's corner cases
INTS = np.array([-7, -6, -1, 0, 1, 5, 7, -2 ** 31, 2 ** 31 - 1], dtype=np.int32)
DIVS = np.array([2, -2, 3, -3, 0, -1, 1, -1, 2], dtype=np.int32)
SPECIAL_CASES = [
    ("maximum_minimum_nan", lambda x, y: kiln.maximum(x, y) + kiln.minimum(y, x) * 2.0,
     [SPECIAL, SPECIAL[::-1].copy()]),
    ("max_literal_nan", lambda x: kiln.maximum(x, 0.5) - kiln.minimum(x, -0.5), [SPECIAL]),
    ("transcendentals", lambda x: (
        kiln.exp(x), kiln.log(x), kiln.tanh(x), kiln.sigmoid(x), kiln.expm1(x),
        kiln.log1p(x), kiln.erf(x), kiln.sqrt(x), kiln.sin(x), kiln.cos(x)), [SPECIAL]),
    ("transcendentals_f64", lambda x: (
        kiln.exp(x), kiln.log(x), kiln.tanh(x), kiln.sigmoid(x), kiln.expm1(x),
        kiln.log1p(x), kiln.erf(x)), [SPECIAL.astype(np.float64)]),
    ("rounding", lambda x: (kiln.floor(x), kiln.ceil(x), kiln.trunc(x),
                                       kiln.round(x), kiln.sign(x), kiln.abs(x)), [SPECIAL]),
    ("float_floordiv_mod", lambda x, y: (x // y, x % y),
     [SPECIAL, np.resize(np.array([2.0, -2.0, 0.0, -0.0, 0.3, INF, NAN], np.float32),
                         SPECIAL.shape)]),
    ("int_floordiv_mod", lambda a, b: (a // b, a % b), [INTS, DIVS]),
    ("int64_floordiv_mod", lambda a, b: (a // b, a % b),
     [np.array([-2 ** 63, -9, 9, 0, 13], np.int64), np.array([-1, 4, -4, 0, 0], np.int64)]),
    ("int_wraps", lambda a: a * 3 + (a - 5), [INTS]),
    ("uint8_wraps", lambda a, b: (a + b) * 3 - b, [np.array([250, 3, 128, 0], np.uint8),
                                                   np.array([10, 255, 128, 1], np.uint8)]),
    ("casts_special", lambda x: (x.to(kiln.int32).to(kiln.float32),
                                    (x > 0).to(kiln.float32),
                                    x.to(kiln.float16).to(kiln.float32),
                                    x.to(kiln.float64).to(kiln.float32)),
     [np.array([-2.7, -0.5, 0.0, 0.4, 3.99, 1e4, 65519.0, 70000.0], np.float32)]),
    ("bool_logic", lambda x, y: ((x > 0) & ~(y > 0)) | ((x < y) ^ (x == y)),
     [SPECIAL, SPECIAL[::-1].copy()]),
    ("pow_literals", lambda x: (x ** 2, x ** 3, x ** 0.5, x ** -1, x ** 1.7),
     [np.abs(SPECIAL)]),
    ("pow_tensor", lambda x, y: x ** y, [np.abs(SPECIAL), SPECIAL[::-1].copy()]),
    ("amax_nan_rows", lambda x: x.amax(-1),
     [np.array([[1, NAN, 3], [-INF, -INF, -INF], [2, 5, 5], [NAN, NAN, 1]], np.float32)]),
    ("argmax_nan_ties", lambda x: x.argmax(-1),
     [np.array([[1, NAN, 3, NAN], [-INF, -INF, -INF, -INF], [2, 5, 5, 1], [0, 0, 0, 0]],
               np.float32)]),
    ("argmax_int", lambda x: x.argmax(0), [np.array([[3, -5], [7, -5], [7, -9]], np.int64)]),
    ("amax_nan_columns", lambda x: x.amax(0),
     [np.array([[1, NAN, 3], [-INF, -INF, -INF], [2, 5, NAN], [NAN, 7, 1]], np.float32).T.copy()]),
    ("argmax_nan_ties_columns", lambda x: x.argmax(0),
     [np.array([[1, NAN, 3, NAN], [-INF, -INF, -INF, -INF], [2, 5, 5, 1], [0, 0, 0, 0]],
               np.float32).T.copy()]),
    ("sum_prod_int32", lambda x: x.sum(-1) + x.prod(-1), [INTS.reshape(3, 3)]),
    ("arange_float", lambda x: x + kiln.arange(0.5, 3.0, 0.25), [np.zeros(10, np.float32)]),
    ("where_literals", lambda x: kiln.where(x > 0, x, 0.0) + kiln.where(x < 1, 2.0, x),
     [SPECIAL]),
]


def _check(got, want, rtol, atol):
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def _run(ck: cgen.CKernel, lib, graph, arrays) -> list:
    ins = [np.ascontiguousarray(a, dtype=v.dtype.np) for a, v in zip(arrays, graph.inputs)]
    outs = [np.empty(v.shape, v.dtype.np) for v in graph.outputs]
    fn = c_build.kernel_function(lib, ck.name, len(ins) + len(outs))
    fn(*[c_build.data_pointer(a) for a in ins + outs])
    return outs


@pytest.fixture(scope="module")
def shared_cases():
    """Every shared case and special case rendered into one module, compiled once."""
    items = {}
    for i, case in enumerate(CASES):
        graph = case.graph()
        items[case.name] = (graph, case.arrays(seed=1), case.rtol, case.atol,
                            cgen.render_c(lower(graph), name=f"case{i}"))
    for i, (name, fn, arrays) in enumerate(SPECIAL_CASES):
        graph = _graph(fn, arrays)
        items[name] = (graph, arrays, 2e-6, 1e-30,
                       cgen.render_c(lower(graph), name=f"special{i}"))
    lib = c_build.load(c_build.start_build(cgen.c_module([x[-1] for x in items.values()])))
    return items, lib


@pytest.mark.parametrize("name", [c.name for c in CASES] + [c[0] for c in SPECIAL_CASES])
def test_c_kernel_matches_ir_interpreter(shared_cases, name):
    items, lib = shared_cases
    graph, arrays, rtol, atol, ck = items[name]
    want, _ = interpret(graph, arrays)
    got = _run(ck, lib, graph, arrays)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if name == "transcendentals":
            # NumPy's own float32 exp/log/tanh are a few ulps off too; compare at that level
            np.testing.assert_allclose(g, w, rtol=4e-7 * 4, atol=1e-37, equal_nan=True)
        else:
            _check(g, w, rtol, atol)


BIG = [
    ("pointwise_parallel", lambda x: F.gelu(x, approximate="tanh"), [(300_000,)]),
    ("broadcast_parallel", lambda x, b: (x + b).tanh(), [(1000, 300), (300,)]),
    ("rows_parallel", lambda x: kiln.softmax(x, -1), [(256, 1000)]),
    ("one_long_row", lambda x: x.sum() + x.amax(), [(400_000,)]),
    ("long_row_write", lambda x: x - x.mean(-1, keepdim=True), [(2, 300_000)]),
    ("column_sums", lambda x: x.sum(0), [(2000, 300)]),
    ("column_softmax", lambda x: kiln.softmax(x, 0), [(300, 700)]),
    # a conv bias's gradient per channel, the gradient also written channels-last: 64 rows
    # walked side by side in two blocks of 32, one per thread
    ("channel_sums_channels_last", lambda g: (g.relu().sum((0, 2, 3)),
                                              g.relu().permute(0, 2, 3, 1).reshape(-1, 64)),
     [(8, 64, 24, 24)]),
]


@pytest.mark.parametrize("name, fn, shapes", BIG, ids=[b[0] for b in BIG])
def test_multithreaded_paths_match_ir_interpreter(name, fn, shapes):
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    graph = _graph(fn, arrays)
    ck = cgen.render_c(lower(graph))
    assert "#pragma omp parallel for" in ck.source
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, arrays)
    for g, w in zip(_run(ck, lib, graph, arrays), want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-4)


def test_float_remainder_alone_brings_its_helper():
    """x % y of floats is spelled kiln_modf, defined with kiln_floordivf: a kernel without a
    floor division must still include it (it builds, and gives NumPy's remainder)."""
    x = np.array([5.5, -5.5, 7.0, -0.5, 3.0], np.float32)
    y = np.array([2.0, 2.0, -3.0, 2.0, -1.5], np.float32)
    graph = _graph(lambda a, b: a % b, [x, y])
    ck = cgen.render_c(lower(graph))
    assert "kiln_modf(" in ck.source
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    _check(_run(ck, lib, graph, [x, y])[0], np.remainder(x, y), 0, 0)


def test_source_is_readable():
    ck = cgen.render_c(lower(BY_NAME["softmax"].graph()))
    src = ck.source
    assert ck.name == "fused_max_sub_exp_sum_div"
    assert f"void {ck.name}(const float *restrict x_ptr, float *restrict out0_ptr)" in src
    # the IR nodes, under a header naming the composite they come from (issue 15)
    assert "// softmax @ cases.py:" in src
    assert "//   %2 = sub(%x, %1)" in src and "//   %3 = exp(%2)" in src
    assert "cases.py:" in src                     # the user's source line
    assert "/* pass 1: reduce" in src and "/* pass 3: write */" in src
    assert "#pragma omp simd reduction(+:acc_" in src
    module = cgen.c_module([ck])
    assert "KILN_HELPER float kiln_expf(float x)" in module
    assert "kiln_tanhf" not in module              # only the helpers a kernel uses


def test_pointwise_loops_follow_the_indices_used():
    flat = cgen.render_c(lower(BY_NAME["chain21"].graph())).source
    assert flat.count("for (") == 1                 # contiguous: one flat loop
    bcast = cgen.render_c(lower(BY_NAME["broadcast"].graph())).source
    assert bcast.count("for (") == 3 and "xindex = x0 * 15 + x1 * 5 + x2" in bcast


def test_pointwise_loop_nest_reads_channels_last_without_division():
    """A conv's bias + ReLU: the GEMM's (N*H*W, C) output read as NCHW. The merged (H, W) loop
    is the load's digit, so the inner loop indexes with no division or remainder."""
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((2 * 5 * 7, 3)).astype(np.float32),
              rng.standard_normal(3).astype(np.float32)]
    graph = _graph(lambda y, b: (y.reshape(2, 5, 7, 3).permute(0, 3, 1, 2) +
                                 b.reshape(1, 3, 1, 1)).relu(), arrays)
    ck = cgen.render_c(lower(graph))
    loads = [line for line in ck.source.splitlines() if "_ptr[" in line and "= " in line]
    assert loads and not any("/" in ln.split("[", 1)[1] or "%" in ln for ln in loads), loads
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, arrays)
    for g, w in zip(_run(ck, lib, graph, arrays), want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_strided_loads_are_staged_when_a_byte_mask_is_also_written():
    """A conv's bias + ReLU reading the channels-last GEMM output in NCHW order, also writing
    the ReLU's mask for the backward: the strided load is first copied into a local array (GCC
    vectorizes no loop mixing it with byte stores), a tile of positions x every channel at once
    (reading runs of channels) where the channels are few enough, else one inner loop's worth;
    the values are those of the interpreter, at sizes that take the multi-threaded path too."""
    rng = np.random.default_rng(7)
    for n, c, h, w in ((2, 3, 5, 7), (16, 32, 26, 26), (2, 300, 3, 7)):
        arrays = [rng.standard_normal((n * h * w, c)).astype(np.float32),
                  rng.standard_normal(c).astype(np.float32)]

        def bias_relu(y, b, n=n, c=c, h=h, w=w):
            r = (y.reshape(n, h, w, c).permute(0, 3, 1, 2) + b.reshape(1, c, 1, 1)).relu()
            return r, r <= 0
        graph = _graph(bias_relu, arrays)
        ck = cgen.render_c(lower(graph))
        assert "stage_" in ck.source
        staged = [ln for ln in ck.source.splitlines() if "= stage_" in ln]
        tiled = c * cgen.TILE_MIN <= cgen.TILE_ELEMENTS
        where = "[x1][g2 - t_g2]" if tiled else "[g2]"
        assert staged and all(ln.endswith(where + ";") for ln in staged), staged
        assert n == 2 or "#pragma omp parallel for collapse(2)" in ck.source
        lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
        want, _ = interpret(graph, arrays)
        for g, wnt in zip(_run(ck, lib, graph, arrays), want):
            _check(g, wnt, 1e-6, 1e-6)


def test_column_reduction_offsets_split_per_row_and_per_step(monkeypatch):
    """Max-pooling a channels-last GEMM output (windows leading): each load's offset is a part
    per row, computed once per block of rows, plus a part per reduction step, so the inner loop
    divides nothing. (Windows this small are unrolled; the column form is for longer ones.)"""
    monkeypatch.setattr(cgen, "UNROLL_LIMIT", 0)
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((2 * 4 * 6, 5)).astype(np.float32)]

    def pool(y):
        w = y.reshape(2, 2, 2, 3, 2, 5).permute(2, 4, 0, 5, 1, 3).reshape(4, 2, 5, 2, 3)
        return (w + 0.5).relu().amax(0), w.sum(0)
    graph = _graph(pool, arrays)
    kernel = lower(graph)
    assert kernel.reduced_leading
    src = cgen.render_c(kernel).source
    assert "row_offset0[" in src and "step_offset0 = " in src
    loads = [ln for ln in src.splitlines() if "= y_ptr[" in ln]
    assert loads and all("row_offset" in ln and "/" not in ln and "%" not in ln
                         for ln in loads), loads
    ck = cgen.render_c(kernel)
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, arrays)
    for g, w in zip(_run(ck, lib, graph, arrays), want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def _pool_relu_mask(y):
    """conv output (N*H*W, C) channels-last -> bias-free ReLU -> 2x2 max-pool over windows
    leading, plus the ReLU's backward mask in the NCHW layout (max_pool2d's fused forward)."""
    a = (y.reshape(2, 4, 6, 5).permute(0, 3, 1, 2) + 0.5).relu()
    w = a.reshape(2, 5, 2, 2, 3, 2).permute(3, 5, 0, 1, 2, 4).reshape(4, 2, 5, 2, 3)
    return w.amax(0), a <= 0


def _bias_grad_and_gemm_layout(g, m):
    """ReLU backward, the bias gradient (a sum per channel) and the gradient handed to the conv
    GEMM channels-last, (N*H*W, C): an element output that is a view of the domain's values."""
    r = kiln.where(m, 0.0, g)
    return r.sum((0, 2, 3)), r.permute(0, 2, 3, 1).reshape(48, 5)


@pytest.mark.parametrize("fn, shapes", [
    (_pool_relu_mask, [(48, 5)]),
    (_bias_grad_and_gemm_layout, [(2, 5, 4, 6), (2, 5, 4, 6)]),
], ids=["pool_relu_mask", "bias_grad_gemm_layout"])
def test_element_outputs_of_another_layout_store_without_division(fn, shapes):
    """An element output whose shape is not the reduction's domain but a reshape/permute of it
    is stored where the domain's element lands, computed at the coordinates the reduction
    reads, not at the domain's linear position re-split into the other layout's digits (a
    division and remainder per digit per element), and the values are right."""
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal(shapes[0]).astype(np.float32)] + [
        rng.random(s) < 0.5 for s in shapes[1:]]
    graph = _graph(fn, arrays)
    ck = cgen.render_c(lower(graph))
    if fn is _pool_relu_mask:
        inner = ck.source.split("#pragma omp simd", 1)[1]
        offsets = [ln.split("_ptr[", 1)[1] for ln in inner.splitlines() if "_ptr[" in ln]
        assert offsets and not any("/" in o or "%" in o for o in offsets), offsets
    else:           # every pass reads g where the sum does: no re-split offsets
        reads = {ln.split("g_ptr[", 1)[1] for ln in ck.source.splitlines() if "g_ptr[" in ln}
        assert len(reads) == 1, reads
        # channels-last stores: the rows (channels) are walked side by side, so each step
        # writes neighbouring elements, not one element per row pass
        assert "float acc_" in ck.source and "out1_ptr[row + rindex * 5]" in ck.source
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, arrays)
    got = _run(ck, lib, graph, arrays)
    for g, w in zip(got, want):
        _check(g, w, 1e-6, 1e-6)


@pytest.mark.parametrize("fn, arrays, match", [
    (lambda x: kiln.round(x, decimals=2), [np.ones(3, np.float32)], "decimals"),
    (lambda a, b: a ** b, [np.ones(3, np.int64), np.ones(3, np.int64)], "tensor exponent"),
])
def test_unsupported_ops_raise_lowering_error(fn, arrays, match):
    with pytest.raises(LoweringError, match=match):
        cgen.render_c(lower(_graph(fn, arrays)))


def _ulps(got: np.ndarray, want64: np.ndarray) -> np.ndarray:
    want = want64.astype(np.float32)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    err = np.abs(got.astype(np.float64) - want64) / np.maximum(
        np.spacing(np.abs(want)).astype(np.float64), 1e-45)
    err[same] = 0
    return err


def test_float32_math_helpers_are_accurate():
    """Within 4 ulps of the float64 result (NumPy's own float32 functions allow up to 4)."""
    helpers = ["kiln_expf", "kiln_logf", "kiln_tanhf", "kiln_expm1f", "kiln_log1pf",
               "kiln_erff"]
    src = cgen.PREAMBLE + "".join(cgen.HELPERS[h] for h in cgen._close_helpers(helpers))
    for h in helpers:
        src += (f"void t_{h}(const float *restrict x, float *restrict y, int64_t n) {{\n"
                f"#pragma omp simd\nfor (int64_t i = 0; i < n; i++) y[i] = {h}(x[i]);\n}}\n")
    lib = c_build.load(c_build.start_build(src))
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20_000) * s for s in (1e-3, 0.3, 1, 4, 30, 1e3)]
                       + [SPECIAL.astype(np.float64)]).astype(np.float32)
    reference = {"kiln_expf": np.exp, "kiln_logf": np.log, "kiln_tanhf": np.tanh,
                 "kiln_expm1f": np.expm1, "kiln_log1pf": np.log1p,
                 "kiln_erff": np.vectorize(math.erf, otypes=[np.float64])}
    with np.errstate(all="ignore"):
        for h in helpers:
            fn = getattr(lib, f"t_{h}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            y = np.empty_like(x)
            fn(x.ctypes.data, y.ctypes.data, x.size)
            want = reference[h](x.astype(np.float64))
            assert np.array_equal(np.isnan(y), np.isnan(want.astype(np.float32))), h
            assert _ulps(y, want).max() <= 4, h


def test_two_staged_loads_in_one_tile_are_each_copied():
    """Two channels-last GEMM outputs read in NCHW order beside a byte mask: both strided loads
    are copied per tile, each inside the copy loop (once, only the first one was, and the
    kernel did not compile)."""
    rng = np.random.default_rng(8)
    n, c, h, w = 2, 16, 5, 7
    arrays = [rng.standard_normal((n * h * w, c)).astype(np.float32) for _ in range(2)]

    def sum_relu(y, z):
        r = (y.reshape(n, h, w, c).permute(0, 3, 1, 2) +
             z.reshape(n, h, w, c).permute(0, 3, 1, 2)).relu()
        return r, r <= 0
    graph = _graph(sum_relu, arrays)
    ck = cgen.render_c(lower(graph))
    assert ck.source.count("= stage_") == 2 and "t_g2" in ck.source
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, arrays)
    for g, wnt in zip(_run(ck, lib, graph, arrays), want):
        _check(g, wnt, 0, 0)


def test_a_value_read_twice_beside_an_input_named_like_its_copy():
    # the second load of `x` would be named `x_1`, the name of the other input: each C name
    # is handed out once
    def f(x, x_1):
        return x[:, :-1] * x[:, 1:] + x_1
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 9)).astype(np.float32),
              rng.standard_normal((4, 8)).astype(np.float32)]
    graph = _graph(f, arrays)
    assert [v.name for v in graph.inputs] == ["x", "x_1"]
    ck = cgen.render_c(lower(graph))
    lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
    want, _ = interpret(graph, arrays)
    np.testing.assert_array_equal(_run(ck, lib, graph, arrays)[0], want[0])
