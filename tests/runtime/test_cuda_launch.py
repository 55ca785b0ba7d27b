"""The lean launch path on a GPU: each generated kernel's launch arguments are prepared once per
executor and reused while its arrays stay where they are, the compiled kernel's own launcher is
called (no `JITFunction.run` per call), and results equal eager (with CUDA graphs off: the plain
launches a program runs when it is not captured; graphs: tests/runtime/test_cuda_graph.py).
GPU-marked: skipped without a GPU, and run on the CPU under the strict fake CUDA by
tests/test_fake_cuda.py."""

import numpy as np
import pytest

import kiln
import kiln.nn.functional as F
from kiln.runtime import triton_launch


def _chain(x, w):
    h = F.gelu(x * 2.0 + 1.0)
    return F.softmax(h @ w, dim=-1).sum(dim=0)


def _launchers(compiled):
    (entry,) = compiled.entries.values()
    return [step.launcher for step in entry.executor.triton_steps.values()]


@pytest.mark.gpu
def test_launch_arguments_are_prepared_once_and_reused(monkeypatch):
    import triton.runtime.jit as jit
    monkeypatch.setenv("KILN_CUDA_GRAPHS", "0")     # the plain launches, not a graph replay
    rng = np.random.default_rng(0)
    x = kiln.tensor(rng.standard_normal((16, 32), dtype=np.float32)).cuda()
    w = kiln.tensor(rng.standard_normal((32, 8), dtype=np.float32)).cuda()
    want = _chain(x, w).cpu().numpy()
    compiled = kiln.compile(_chain)
    compiled(x, w)                                  # traces
    # making the executor started building its kernels for the GPU, in the background
    (entry,) = compiled.entries.values()
    for kind, tk, _, _, sub, _ in entry.executor.steps:
        if kind == "triton":
            specs = [(tuple(v.shape), np.dtype(v.dtype.np))
                     for v in list(sub.inputs) + list(sub.outputs)]
            key = triton_launch._compiled_key(tk, (True,) * len(specs), specs)
            assert key in triton_launch._COMPILED or key in triton_launch._BUILDING
    compiled(x, w)                                  # first replay: prepares every launch
    launchers = _launchers(compiled)
    assert launchers and all(isinstance(la, triton_launch.CudaKernelLauncher)
                             for la in launchers)
    assert all(la.prepared == 1 for la in launchers)
    calls = []
    original = jit.JITFunction.run
    jit.JITFunction.run = lambda self, *a, **k: calls.append(self) or original(self, *a, **k)
    try:
        for _ in range(3):          # results dropped: the executor writes the same arrays again
            np.testing.assert_allclose(compiled(x, w).cpu().numpy(), want, rtol=1e-5,
                                       atol=1e-6)
    finally:
        jit.JITFunction.run = original
    assert calls == [] and all(la.prepared == 1 for la in launchers)
    # a result still held: its kernel writes a new array, so that launch is prepared again
    kept = [compiled(x, w) for _ in range(2)]
    assert [la.prepared for la in launchers][-1] == 2
    for k in kept:
        np.testing.assert_allclose(k.cpu().numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_a_new_alignment_fetches_the_kernel_built_for_it(monkeypatch):
    import cupy as cp
    from kiln.codegen.kernel import lower
    from kiln.codegen.triton import render_triton
    from tests.codegen.cases import BY_NAME
    case = BY_NAME["gelu_tanh"]
    graph = case.graph()
    (x,) = case.arrays(seed=3)
    tk = render_triton(lower(graph))
    built = []
    compiled_kernel = triton_launch.compiled_kernel
    monkeypatch.setattr(triton_launch, "compiled_kernel",
                        lambda tk, aligned, *a: built.append(aligned) or
                        compiled_kernel(tk, aligned, *a))
    launcher = triton_launch.kernel_launcher(tk, "cuda")
    storage = cp.zeros(x.size + 1, dtype=x.dtype)
    storage[1:] = cp.asarray(x.ravel())
    aligned_in = storage[1:].copy().reshape(x.shape)
    shifted_in = storage[1:].reshape(x.shape)         # 4 bytes past a 16-byte boundary
    out = cp.empty(x.shape, x.dtype)
    launcher([aligned_in], [out])
    first = cp.asnumpy(out)
    out2 = cp.empty(x.shape, x.dtype)
    launcher([shifted_in], [out2])
    assert built == [(True, True), (False, True)] and launcher.prepared == 2
    np.testing.assert_array_equal(cp.asnumpy(out2), first)
    launcher([shifted_in], [out2])                    # same pointers: nothing prepared
    assert launcher.prepared == 2 and len(built) == 2


def test_one_source_with_other_constants_is_another_binary():
    # a kernel's build specializes on its constexprs, warps and argument dtypes beside its
    # source: the in-memory table of built kernels must not hand one build to the other
    from kiln.codegen.triton import TritonKernel
    specs = [((16,), np.dtype(np.float32)), ((16,), np.dtype(np.float32))]
    base = TritonKernel("k", "@triton.jit\ndef k(x, y, BLOCK: tl.constexpr): pass\n",
                        ("x", "y", "BLOCK"), {"x": "*fp32", "y": "*fp32", "BLOCK": "constexpr"},
                        {"BLOCK": 16}, (1,), 4)
    aligned = (True, True)
    key = triton_launch._compiled_key(base, aligned, specs)
    assert key == triton_launch._compiled_key(base, aligned, list(specs))
    other_block = TritonKernel(*[getattr(base, f) for f in
                                 ("name", "source", "arg_names", "signature")],
                               {"BLOCK": 32}, base.grid, base.num_warps)
    other_warps = TritonKernel(*[getattr(base, f) for f in
                                 ("name", "source", "arg_names", "signature", "constexprs",
                                  "grid")], 8)
    f64 = [((16,), np.dtype(np.float64))] * 2
    keys = {key, triton_launch._compiled_key(other_block, aligned, specs),
            triton_launch._compiled_key(other_warps, aligned, specs),
            triton_launch._compiled_key(base, aligned, f64),
            triton_launch._compiled_key(base, (True, False), specs)}
    assert len(keys) == 5
