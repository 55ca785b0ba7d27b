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
from kiln.codegen.triton import render_triton, split_tail
from kiln.compiler import trace
from kiln.ir.interpreter import interpret
from kiln.runtime.triton_launch import build_one_for_gpu, run_kernel


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


def _nvidia_problem() -> str | None:
    try:
        import triton.backends
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as e:          # pragma: no cover - depends on the Triton build
        return f"this Triton cannot build for CUDA: {e!r}"
    if "nvidia" not in triton.backends.backends:
        return "this Triton build has no NVIDIA backend"
    return None


@pytest.mark.parametrize("n, dtype", [(1 << 20, kiln.float32), (1000003, kiln.float32),
                                      (1000003, kiln.float16)], ids=["aligned", "odd", "half"])
def test_sm90_ptx_loads_and_stores_16_bytes(n, dtype):
    problem = _nvidia_problem()
    if problem:
        pytest.skip(problem)
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
