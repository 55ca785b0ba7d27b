"""Programs the differential fuzzer (tests/codegen/fuzz_programs.py) found failing, minimized:
each runs eagerly and compiled for the C and NumPy backends (a trace, then replays on fresh
inputs), compared with PyTorch on the same inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln.runtime import c_build
from tests.codegen.fuzz_programs import compare


def _min_of_uint8_rows(x):          # amin as -amax(-x): -x wraps on uint8
    return x.amin(dim=-1), x.min(dim=0).values, x.argmin(dim=-1), x.amin()


def _min_of_int8_extremes(x):       # -(-128) is -128 in int8: the smallest value was lost
    return x.amin(dim=0, keepdim=True), x.argmin(), x.min(dim=-1).indices


def _all_any_of_uint8(x):           # PyTorch's all/any of uint8 are uint8
    return x.all(dim=-1), x.any(), x.all(dim=0, keepdim=True)


CASES = {  # name -> (function, input shape, numpy dtype, low, high)
    "min_of_uint8_rows": (_min_of_uint8_rows, (16, 8), np.uint8, 0, 12),
    "min_of_int8_extremes": (_min_of_int8_extremes, (16, 5), np.int8, -128, 128),
    "min_of_int32_extremes": (_min_of_int8_extremes, (7, 16), np.int32, -2 ** 31, 2 ** 31),
    "all_any_of_uint8": (_all_any_of_uint8, (16, 4), np.uint8, 0, 3),
}


def _backends():
    return ["eager", "numpy"] + (["c"] if c_build.compiler_problem() is None else [])


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name", sorted(CASES))
def test_fuzz_regression_matches_torch(name, backend, monkeypatch):
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")      # the C kernels run, no NumPy trials
    fn, shape, dtype, low, high = CASES[name]
    run = fn if backend == "eager" else kiln.compile(fn, backend=backend)
    rng = np.random.default_rng(len(name))
    for call in range(3):                   # the first call traces; the others replay
        data = rng.integers(low, high, shape).astype(dtype)
        data.flat[call] = np.iinfo(dtype).min           # the extremes -x does not survive
        got, want = run(kiln.tensor(data)), fn(torch.from_numpy(data))
        for i, (g, w) in enumerate(zip(got, want)):
            why = compare(g, w, f"{name} on {backend}, call {call}, output {i}")
            assert why is None, why
