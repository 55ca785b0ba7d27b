"""On a real GPU: the first compiled call of a large pointwise kernel times its launch
configurations with CUDA events (kiln.runtime.triton_tune.event_timer), keeps one that computes
eager's results, records it under this GPU's name and a later process reads it back. GPU-marked,
and skipped where no GPU name can be read (the tests' fake CUDA: tests/runtime/test_triton_tune.py
checks the same logic there with a fake timer)."""

import json

import numpy as np
import pytest

import kiln
import kiln.nn.functional as F
from kiln.codegen.triton import tuning_candidates
from kiln.runtime import triton_launch, triton_tune

N = (1 << 24) + 3           # 64 MB of float32 in, 64 MB out; not a multiple of 16: split tail


def _fn(x):
    return F.gelu(x * 1.5 - 0.25, approximate="tanh")


@pytest.mark.gpu
def test_a_large_kernel_is_tuned_on_this_gpu_and_read_back(monkeypatch, tmp_path):
    gpu = triton_tune.gpu_name()
    if gpu is None:
        pytest.skip("no GPU name to key a choice by (the fake CUDA)")
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_CUDA_GRAPHS", "0")
    monkeypatch.delenv("KILN_TRITON_TUNE", raising=False)
    monkeypatch.setattr(triton_tune, "TUNED_CONFIGS", {})
    monkeypatch.setattr(triton_tune, "_loaded", [False])
    x = kiln.tensor(np.random.default_rng(0).standard_normal(N, dtype=np.float32)).cuda()
    want = _fn(x).cpu().numpy()

    def run():
        compiled = kiln.compile(_fn)
        compiled(x)                     # traces; the executor starts the candidates' builds
        for future in list(triton_launch._BUILDING.values()):
            future.result()             # (a launch does not wait for them: it settles later)
        got = compiled(x).cpu().numpy()
        (entry,) = compiled.entries.values()
        (step,) = entry.executor.triton_steps.values()
        return got, step.launcher
    got, launcher = run()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    tuning = launcher.tuning
    print(tuning.describe())
    assert tuning.gpu == gpu and not tuning.cached and tuning.rejected == ()
    assert [c for c, _ in tuning.timings] == tuning_candidates(launcher.tk)
    assert all(0 < ms < 1e3 for _, ms in tuning.timings)
    assert launcher.tk.config == tuning.chosen
    key = triton_tune.config_key(launcher.tk, gpu)
    assert json.loads(triton_tune.configs_path().read_text())[key] == {
        "block": tuning.chosen[0], "num_warps": tuning.chosen[1]}
    # a later process: read back, nothing timed, the same results
    triton_launch.clear_memory_cache()
    monkeypatch.setattr(triton_tune, "TUNED_CONFIGS", {})
    monkeypatch.setattr(triton_tune, "_loaded", [False])
    got, launcher = run()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert launcher.tuning.cached and launcher.tk.config == tuning.chosen
