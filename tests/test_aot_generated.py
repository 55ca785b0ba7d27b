"""Every Triton kernel that compiling the tracer's corpus generates (forward and backward
programs, backend="triton") also builds ahead of time for sm_80 and sm_90: the interpreter
accepts more than the GPU compiler does, so passing in the interpreter alone proves little."""

import pytest

import kiln
from kiln.codegen.kernel import LoweringError
from kiln.runtime.triton_launch import compile_for_gpu, render
from tests.tracer.test_trace_corpus import CASES


@pytest.fixture(scope="module")
def generated_kernels(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_CACHE_DIR", str(tmp_path_factory.mktemp("kiln_cache")))
    kernels = {}                                 # source -> TritonKernel, one per distinct kernel
    for name in sorted(CASES):
        kiln.manual_seed(0)
        fn, args = CASES[name]()
        compiled = kiln.compile(fn, backend="triton")
        compiled(*args)
        for entry in compiled.entries.values():
            for schedule in (entry.schedule, getattr(entry.backward, "schedule", None)):
                for step in getattr(schedule, "kernels", []):
                    try:
                        tk = render(step.subgraph)
                    except LoweringError:        # runs on the array executor instead
                        continue
                    kernels.setdefault(tk.source, tk)
    yield list(kernels.values())
    mp.undo()


def test_the_corpus_generates_many_kernels(generated_kernels):
    assert len(generated_kernels) >= 100


@pytest.mark.parametrize("arch", [80, 90])
def test_every_generated_kernel_compiles_ahead_of_time(generated_kernels, arch):
    failures = []
    for tk in generated_kernels:
        try:
            ptx = compile_for_gpu(tk, arch)
            assert f".target sm_{arch}" in ptx and f".entry {tk.name}" in ptx
        except Exception as e:                   # collect them all: one report, every kernel
            failures.append(f"{tk.name}: {e!r:.300}")
    assert not failures, f"{len(failures)} of {len(generated_kernels)} kernels failed to " \
                         f"build for sm_{arch}:\n" + "\n".join(failures)
