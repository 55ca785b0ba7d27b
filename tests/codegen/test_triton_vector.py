"""Pointwise Triton kernels load and store 16 bytes at a time: the sm_90 PTX of elementwise
kernels built ahead of time holds `ld.global.v4` / `st.global.v4`, also where the element count
is not a multiple of 16 (full blocks then run unmasked, the last one masked), and those split
kernels compute what the IR interpreter does in Triton's interpreter."""

from __future__ import annotations

import re

import numpy as np
import pytest

import kiln
from kiln.codegen.kernel import lower
from kiln.codegen.triton import render_triton, split_tail, tuning_candidates
from kiln.compiler import trace
from kiln.ir.interpreter import interpret
from kiln.runtime.triton_launch import build_for_gpu, build_one_for_gpu, launch, run_kernel


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_CACHE_DIR", str(tmp_path_factory.mktemp("kiln_cache")))
    yield
    mp.undo()


def _graph(fn, *specs):
    return trace(fn, *[kiln.randn(*s).to(d) for s, d in specs]).graphs[0]


def _gelu_add(x, b):
    return kiln.nn.functional.gelu(x + b) * 0.5


# (function, ((shape, dtype) per input)): odd counts split, multiples of 16 do not
SPLIT = [
    (_gelu_add, [((4097,), kiln.float32), ((4097,), kiln.float32)]),
    (_gelu_add, [((67, 73), kiln.float32), ((73,), kiln.float32)]),      # broadcast: mod index
    (lambda x, y: (x * y * 0.25 - 1.5).exp(), [((5000,), kiln.float16), ((5000,), kiln.float16)]),
    (lambda x: kiln.maximum(x * 3 + 1, x), [((4100,), kiln.int32)]),
]


@pytest.mark.parametrize("fn, specs", SPLIT, ids=["odd", "broadcast", "half", "int32"])
def test_split_tail_kernels_match_the_ir_interpreter(fn, specs):
    graph = _graph(fn, *specs)
    kernel = lower(graph)
    assert split_tail(kernel.numel)
    src = render_triton(kernel).source
    assert f"if xoffset + XBLOCK <= {kernel.numel}:" in src and "else:" in src
    rng = np.random.default_rng(3)
    arrays = [(rng.standard_normal(v.shape) * 4).astype(v.dtype.np) for v in graph.inputs]
    want, _ = interpret(graph, arrays)
    got = run_kernel(graph, arrays)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        if w.dtype.kind in "iu":
            np.testing.assert_array_equal(g, w)
        else:
            # half: eager rounds each intermediate to half, the kernel computes in float32
            tol = 1e-2 if w.dtype == np.float16 else 1e-5
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol,
                                       atol=tol)


def test_small_or_aligned_kernels_keep_one_masked_body():
    for n in (4096 * 4, 1000, 4095):
        src = render_triton(lower(_graph(lambda x: x.exp(), ((n,), kiln.float32)))).source
        assert "xmask = xindex <" in src and "if xoffset" not in src


def _accesses(ptx: str) -> list:
    return re.findall(r"\b(ld|st)\.global(\.v\d)?\.b(\d+)", ptx)



@pytest.mark.parametrize("n, dtype", [(1 << 20, kiln.float32), (1000003, kiln.float32),
                                      (1000003, kiln.float16)], ids=["aligned", "odd", "half"])
def test_sm90_ptx_loads_and_stores_16_bytes(n, dtype, nvidia_backend):
    tk = render_triton(lower(_graph(_gelu_add, ((n,), dtype), ((n,), dtype))))
    ptx = build_one_for_gpu(tk, 90).ptx
    accesses = _accesses(ptx)
    vector = [a for a in accesses if a[1] == ".v4" and a[2] == "32"]     # 4 x 32 bits
    assert {a[0] for a in vector} == {"ld", "st"}, accesses
    if split_tail(n):
        # the full blocks' branch: two inputs and one output, each in 16-byte pieces
        loads = [a for a in vector if a[0] == "ld"]
        stores = [a for a in vector if a[0] == "st"]
        assert len(loads) >= 2 and len(stores) >= 1
    else:
        assert all(a[1] == ".v4" for a in accesses), accesses


# ----------------------------------------------------------------------------- tuning candidates

TUNED = {   # name -> (function, input specs, render options)
    "pointwise": (_gelu_add, [((4099,), kiln.float32), ((4099,), kiln.float32)], {}),
    "persistent": (lambda x: kiln.nn.functional.softmax(x, -1), [((5, 700), kiln.float32)], {}),
    "looped": (lambda x: kiln.nn.functional.log_softmax(x, -1), [((3, 5000), kiln.float32)],
               {}),
    "rows": (lambda x: (x * x).sum(0), [((300, 70), kiln.float32)], {}),      # column sums
}


@pytest.mark.parametrize("name", TUNED)
def test_every_tuning_candidate_computes_what_the_ir_interpreter_does(name):
    fn, specs, options = TUNED[name]
    graph = _graph(fn, *specs)
    tk = render_triton(lower(graph), **options)
    assert tk.layout == name
    candidates = tuning_candidates(tk)
    assert candidates[0] == tk.config and len(candidates) == len(set(candidates)) >= 3
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(v.shape).astype(v.dtype.np) for v in graph.inputs]
    (want,), _ = interpret(graph, arrays)
    for block, warps in candidates:
        k = tk.with_config(block, warps)
        assert k.source == tk.source and k.num_warps == warps
        assert k.grid == ((-(-tk.numel // block),) if name in ("pointwise", "rows")
                          else tk.grid)
        out = np.empty_like(want)
        launch(k, [np.ascontiguousarray(a) for a in arrays], [out])
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6, err_msg=str((block, warps)))


def test_kernels_with_nothing_to_tune_have_one_candidate():
    from kiln.codegen.triton import TritonKernel
    conv_like = TritonKernel("k", "", ("x",), {"x": "*fp32"}, {"BLOCK_M": 64}, (4,), 4)
    assert tuning_candidates(conv_like) == [(64, 4)]
    # a row of 64: one warp per 32 elements at most, the block stays the row's
    tk = render_triton(lower(_graph(lambda x: x.sum(-1), ((8, 64), kiln.float32))))
    assert {b for b, _ in tuning_candidates(tk)} == {64}
    assert all(32 * w <= 64 for _, w in tuning_candidates(tk))


def test_tuning_candidates_build_for_sm90(nvidia_backend):
    fn, specs, _ = TUNED["looped"]
    tk = render_triton(lower(_graph(fn, *specs)))
    kernels = [tk.with_config(*c) for c in tuning_candidates(tk)]
    builds = build_for_gpu(kernels, arch=90, workers=2)
    assert len(builds) == len(kernels)
    assert all(f".entry {tk.name}" in b.ptx and b.cubin[:4] == b"\x7fELF" for b in builds)
    # each with its own warp count: 32 threads per warp
    assert sorted(int(re.search(r"\.(?:req|max)ntid (\d+)", b.ptx).group(1)) for b in builds) == \
        sorted(32 * k.num_warps for k in kernels)


def test_float32_tanh_is_within_2_ulp_of_torch_in_float64():
    # Triton's own float32 tanh (`_tanh32`: a polynomial below 0.625, 1 - 2 / (exp(2|x|) + 1)
    # above), about half the instructions of the portable expm1 formula
    torch = pytest.importorskip("torch")
    x = np.concatenate([np.linspace(-20, 20, 40001), np.linspace(-0.7, 0.7, 20001),
                        [0.0, 1e-30, -1e-30, 1e-5, 100.0, -100.0, np.inf, -np.inf, np.nan]]
                       ).astype(np.float32)
    graph = _graph(lambda t: t.tanh(), ((x.size,), kiln.float32))
    src = render_triton(lower(graph)).source
    assert "_tanh32(" in src and "_expm1" not in src
    (got,) = run_kernel(graph, [x])
    want = torch.tanh(torch.from_numpy(x.astype(np.float64))).numpy()
    finite = np.isfinite(want)
    ulp = np.spacing(np.abs(want[finite]).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got[finite] - want[finite]) / ulp) <= 2
    np.testing.assert_array_equal(got[~finite], want[~finite])         # NaN stays NaN
    assert got[-3:-1].tolist() == [1.0, -1.0]                            # tanh(+-inf)
    # float64 keeps the portable formula
    assert "_tanh32" not in render_triton(lower(_graph(
        lambda t: t.tanh(), ((16,), kiln.float64)))).source



# ----------------------------------------------------------------------------- several rows

def test_column_sums_and_short_rows_take_several_rows_per_program():
    F = kiln.nn.functional
    col = render_triton(lower(_graph(lambda x: x.sum(0), ((512, 64), kiln.float32))))
    assert col.layout == "rows" and col.constexprs == {"XBLOCK": 8} and col.grid == (8,)
    assert "row = (tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK))[:, None]" in col.source
    assert "tl.reduce(" in col.source and ", 1, _sum_combine, keep_dims=True)" in col.source
    short = render_triton(lower(_graph(lambda x: F.softmax(x, -1), ((4096, 10), kiln.float32))))
    assert short.layout == "rows" and short.grid == (256,)              # 16 rows each
    for fn, shape in ((lambda x: x.sum(-1), (512, 300)), (lambda x: x.argmax(-1), (512, 10)),
                      (lambda x: x.sum(0), (512, 1))):
        assert render_triton(lower(_graph(fn, (shape, kiln.float32)))).layout == "persistent"


@pytest.mark.parametrize("xblock", [4, 32])
def test_every_reduction_case_in_several_rows_per_program_matches_the_ir_interpreter(
        monkeypatch, xblock):
    from kiln.codegen import triton as renderer
    from tests.codegen.cases import CASES
    monkeypatch.setattr(renderer, "_rows_per_program", lambda k: 1 if k.numel <= 1 or any(
        getattr(s, "op", None) == "argmax" for s in k.body) else xblock)
    checked = 0
    for case in CASES:
        graph = case.graph()
        try:
            tk = render_triton(lower(graph), **case.options)
        except Exception:
            continue                        # not generated: test_triton_codegen says why
        if tk.layout != "rows":
            continue
        arrays = case.arrays(seed=1)
        want, _ = interpret(graph, arrays)
        for g, w in zip(run_kernel(graph, arrays, **case.options), want):
            if w.dtype.kind in "biu":
                np.testing.assert_array_equal(g, w, err_msg=case.name)
            else:
                np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol,
                                           err_msg=case.name)
        checked += 1
    assert checked >= 15


def test_sm90_column_sums_load_16_bytes_with_several_rows_per_program(monkeypatch,
                                                                       nvidia_backend):
    from kiln.codegen import triton as renderer
    graph = _graph(lambda x: x.sum(0), ((512, 64), kiln.float32))
    tiles = build_one_for_gpu(render_triton(lower(graph)), 90).ptx
    assert any(a[0] == "ld" and a[1] for a in _accesses(tiles)), _accesses(tiles)
    monkeypatch.setattr(renderer, "_rows_per_program", lambda k: 1)     # a column each
    columns = build_one_for_gpu(render_triton(lower(graph)), 90).ptx
    assert not any(a[0] == "ld" and a[1] for a in _accesses(columns)), _accesses(columns)
