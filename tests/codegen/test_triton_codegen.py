"""Generated Triton kernels: run in Triton's interpreter they equal the IR interpreter, they
compile ahead of time for sm_80 and sm_90, their source is readable, and what cannot be
generated raises LoweringError."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.codegen.kernel import LoweringError, lower
from kiln.codegen.triton import render_triton
from kiln.compiler import trace
from kiln.ir.interpreter import interpret
from kiln.runtime.triton_launch import compile_for_gpu, run_kernel
from tests.codegen.cases import BY_NAME, CASES


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_CACHE_DIR", str(tmp_path_factory.mktemp("kiln_cache")))
    yield
    mp.undo()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_interpreter_matches_ir(case):
    graph = case.graph()
    arrays = case.arrays(seed=1)
    want, _ = interpret(graph, arrays)
    got = run_kernel(graph, arrays, **case.options)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_compiles_ahead_of_time(case, arch):
    tk = render_triton(lower(case.graph()), **case.options)
    ptx = compile_for_gpu(tk, arch)
    assert f".target sm_{arch}" in ptx
    assert f".entry {tk.name}" in ptx


def test_source_is_readable():
    tk = render_triton(lower(BY_NAME["softmax"].graph()))
    src = tk.source
    assert tk.name == "fused_max_sub_exp_sum_div"
    assert f"def {tk.name}(" in src
    # the IR nodes, under a header naming the composite they come from (issue 15)
    assert "# softmax @ cases.py:" in src
    assert "#   %2 = sub(%x, %1)" in src and "#   %3 = exp(%2)" in src
    assert "cases.py:" in src                      # the user's source line
    assert "libdevice" not in src


def test_kernel_description_prints_loads_and_reductions():
    text = str(lower(BY_NAME["layer_norm"].graph()))
    assert "reduction rows=6 x 24" in text
    assert "load in0[row * 24 + rindex]" in text
    assert "reduce_sum" in text and "[level 1]" in text


def test_contiguous_fast_path_and_view_index_math():
    k = lower(BY_NAME["chain21"].graph())
    assert all(str(s.offset) == "xindex" for s in k.body if hasattr(s, "offset"))
    k = lower(BY_NAME["permute_slice_flip"].graph())
    (load,) = [s for s in k.body if type(s).__name__ == "Load"]
    assert "xindex" not in str(load.offset) and "x0" in str(load.offset)


def test_looped_reduction_is_used_for_long_rows():
    case = BY_NAME["softmax_looped"]
    src = render_triton(lower(case.graph()), **case.options).source
    assert src.count("for roffset in range(0, 300, RBLOCK):") == 3   # max, sum, write
    short = render_triton(lower(BY_NAME["softmax"].graph())).source
    assert "for roffset" not in short


def _graph(fn, *shapes):
    return trace(fn, *[kiln.randn(*s) for s in shapes]).graphs[0]


@pytest.mark.parametrize("fn, shapes, match", [
    (lambda x: x.sum(0) + x.sum(1), [(4, 4)], "different iteration spaces"),
    (lambda x: x.cumsum(1), [(3, 4)], "cumsum"),
    (lambda x: kiln.cat([x, x], 0), [(3, 4)], "cat"),
    (lambda x, y: x @ y, [(3, 4), (4, 2)], "matmul"),
    (lambda x: x.sum(1).flip(0) + x.sum(1), [(4, 5)], "other rows"),
])
def test_unsupported_groups_raise_lowering_error(fn, shapes, match):
    with pytest.raises(LoweringError, match=match):
        lower(_graph(fn, *shapes))


def test_round_with_decimals_is_not_generated():
    # Triton has no decimal rounding: the kernel must not be generated (the compiler then runs
    # the op outside a kernel) rather than silently round to an integer
    with pytest.raises(LoweringError, match="decimals"):
        render_triton(lower(_graph(lambda x: kiln.round(x * 3.0, decimals=2), (5,))))


def test_log1p_of_infinity_is_infinity():
    x = np.array([np.inf, 1e-8, -0.5, 3.0, -1.0], np.float32)
    graph = trace(lambda t: kiln.log1p(t), kiln.tensor(x)).graphs[0]
    (got,) = run_kernel(graph, [x])
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(got, np.log1p(x), rtol=1e-6)
