"""The Triton runtime: disk and memory caches (corrupt entries are rebuilt), inspectable source
files, torch-free imports, and the CuPy launch path on a GPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kiln.codegen.kernel import lower
from kiln.codegen.triton import render_triton
from kiln.ir.interpreter import interpret
from kiln.runtime import triton_launch as tlaunch
from tests.codegen.cases import BY_NAME, CASES


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    tlaunch.clear_memory_cache()
    yield tmp_path
    tlaunch.clear_memory_cache()


def test_ptx_cache_hits_and_rebuilds_corrupt_entries(cache_dir):
    tk = render_triton(lower(BY_NAME["softmax"].graph()))
    ptx = tlaunch.compile_for_gpu(tk, 80)
    (entry,) = (cache_dir / "triton" / "ptx").iterdir()
    assert entry.read_bytes().endswith(ptx.encode())

    tlaunch.clear_memory_cache()
    cache = tlaunch.KernelCache()
    key = entry.name
    assert cache.get("ptx", key) == ptx.encode()
    assert tlaunch.compile_for_gpu(tk, 80) == ptx            # served from disk

    for damage in (lambda raw: raw[: len(raw) // 2],              # half-written
                   lambda raw: raw.replace(b".target", b".tarxet"),  # flipped payload
                   lambda raw: b"not json\n" + raw):              # broken header
        entry.write_bytes(damage(entry.read_bytes()))
        assert cache.get("ptx", key) is None
        tlaunch.clear_memory_cache()
        assert tlaunch.compile_for_gpu(tk, 80) == ptx            # rebuilt, and rewritten
        assert cache.get("ptx", key) == ptx.encode()


def test_key_depends_on_target(cache_dir):
    tk = render_triton(lower(BY_NAME["gelu_tanh"].graph()))
    assert tlaunch.compile_for_gpu(tk, 80) != tlaunch.compile_for_gpu(tk, 90)
    assert len(list((cache_dir / "triton" / "ptx").iterdir())) == 2


def test_source_file_is_inspectable_and_rewritten_when_corrupt(cache_dir):
    case = BY_NAME["layer_norm"]
    graph, arrays = case.graph(), case.arrays()
    tk = render_triton(lower(graph))
    tlaunch.run_kernel(graph, arrays)
    path = tlaunch.source_path(tk)
    assert path.read_text() == tk.source
    path.write_text(tk.source[:40])                          # truncated by a crash
    tlaunch.clear_memory_cache()
    got = tlaunch.run_kernel(graph, arrays)
    assert path.read_text() == tk.source
    np.testing.assert_allclose(got[0], interpret(graph, arrays)[0][0], rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs_are_accepted(cache_dir):
    case = BY_NAME["softmax"]
    graph = case.graph()
    x = np.asfortranarray(case.arrays()[0])
    np.testing.assert_allclose(tlaunch.run_kernel(graph, [x])[0], interpret(graph, [x])[0][0],
                               rtol=1e-5, atol=1e-6)


def test_runtime_imports_neither_torch_nor_cupy():
    code = ("import sys, numpy as np; import kiln.runtime.triton_launch as t; "
            "import kiln.runtime.triton_cuda; "
            "assert 'torch' not in sys.modules and 'cupy' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cuda_launch_on_cupy_stream(case, cache_dir):
    import cupy as cp
    graph = case.graph()
    arrays = case.arrays(seed=2)
    want, _ = interpret(graph, arrays)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        got = tlaunch.run_kernel(graph, [cp.asarray(a) for a in arrays], backend="cuda",
                                 **case.options)
        stream.synchronize()
    for g, w in zip(got, want):
        g = cp.asnumpy(g)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol)


def test_a_build_tripped_by_cpythons_ast_race_is_retried_once():
    from kiln.runtime.triton_launch import _race_safe
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=84, after=140)")
        return "built"
    assert _race_safe(flaky) == "built" and len(calls) == 2

    def broken():
        raise SystemError("something else")
    with pytest.raises(SystemError, match="something else"):
        _race_safe(broken)
