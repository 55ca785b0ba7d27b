"""A compiled program's Triton kernels build ahead of time for an H100/H200 (sm_90) on a machine
without a GPU, in parallel, into kiln's disk cache: PTX and cubin per kernel, and a second build
reads them back instead of compiling again."""

import numpy as np

import kiln
import kiln.nn.functional as F
from kiln.runtime import triton_launch


def _program_kernels() -> list:
    """The Triton kernels of a small compiled program (forward and backward), on the CPU."""
    rng = np.random.default_rng(0)
    x = kiln.tensor(rng.standard_normal((8, 16), dtype=np.float32))
    w = kiln.tensor(rng.standard_normal((16, 4), dtype=np.float32), requires_grad=True)

    def step(x, w):
        return F.log_softmax(F.gelu(x) @ w, dim=-1).mean()
    compiled = kiln.compile(step, backend="triton")
    compiled(x, w)
    kernels = []
    for entry in compiled.entries.values():
        for executor in (entry.executor, entry.backward):
            kernels += [st[1] for st in getattr(executor, "steps", []) if st[0] == "triton"]
    return kernels



def test_program_kernels_build_for_sm90_in_parallel_and_come_back_from_the_cache(
        tmp_path, monkeypatch, nvidia_backend):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    kernels = _program_kernels()
    assert len(kernels) >= 3
    builds = triton_launch.build_for_gpu(kernels + kernels[:1], arch=90, workers=2)
    assert len(builds) == len({tk.source for tk in kernels})         # each built once
    for tk, b in zip(dict.fromkeys(kernels), builds):
        assert b.kernel == tk.name and not b.cached
        assert ".target sm_90" in b.ptx and f".entry {tk.name}" in b.ptx
        assert b.cubin[:4] == b"\x7fELF"
    assert len(list((tmp_path / "triton" / "aot_cubin").iterdir())) == len(builds)
    triton_launch.clear_memory_cache()
    again = triton_launch.build_for_gpu(kernels, arch=90)
    assert all(b.cached for b in again)
    assert [(b.ptx, b.cubin) for b in again] == [(b.ptx, b.cubin) for b in builds]
    # a damaged entry is built again, never trusted
    entry = next((tmp_path / "triton" / "aot_cubin").iterdir())
    entry.write_bytes(entry.read_bytes()[:100])
    rebuilt = triton_launch.build_for_gpu(kernels, arch=90)
    assert sum(not b.cached for b in rebuilt) == 1
    assert [b.cubin[:4] for b in rebuilt] == [b"\x7fELF"] * len(builds)
