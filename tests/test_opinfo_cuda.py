"""PyTorch's operator samples on cuda tensors, with `tests/fake_cuda.py` standing in for the GPU.

The first two samples of every OpInfo run with kiln's inputs on the fake CUDA (NumPy memory
behind CuPy's surface, refusing NumPy-only code on device arrays, `np.asarray` of them
included) against torch on the CPU, in float32 values and in float64 values with gradients.
An op must do on cuda what it does on the CPU: anything `tests/test_opinfo.py` does not already
list for the CPU, and `CUDA_KNOWN` does not list here, fails. The fake replaces CuPy for good in
its process, so the sweep runs in a subprocess of its own.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("expecttest")     # torch's OpInfo module imports it

from tests.test_opinfo import KNOWN  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"float32": ["--dtype", "float32"], "float64_grad": ["--dtype", "float64", "--grad"]}
NO_BFLOAT16 = "n/a: kiln has no bfloat16 on CUDA devices (CuPy has none); refused clearly"
CUDA_KNOWN = {("bfloat16", "float32"): NO_BFLOAT16, ("bfloat16", "float64_grad"): NO_BFLOAT16}


@pytest.mark.parametrize("mode", list(MODES))
def test_ops_on_cuda_do_what_they_do_on_the_cpu(mode, tmp_path):
    out = tmp_path / "sweep.json"
    run = subprocess.run([sys.executable, "-m", "tests.opinfo_sweep", "--device", "cuda",
                          "--samples", "2", *MODES[mode], "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {r["op"]: r for r in json.loads(out.read_text())}
    bad = {op: r for op, r in rows.items() if set(r["counts"]) - {"ok", "skip"}}
    known = set(KNOWN) | set(CUDA_KNOWN)
    new = {op: r for op, r in bad.items() if (op, mode) not in known}
    assert not new, "\n".join(f"{op}: {r['counts']} {r['first']}" for op, r in new.items())
    fixed = [op for op, m in CUDA_KNOWN if m == mode and op in rows and op not in bad]
    assert not fixed, f"now clean on cuda, delete from CUDA_KNOWN: {fixed}"
