"""The GPU-marked tests of compiled code and of the ops, run on the CPU with `cuda` faked
(tests/fake_cuda.py): what they check of device placement holds without a GPU too."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_tests_pass_with_cuda_faked_on_the_cpu():
    # a process of its own: the stand-in replaces kiln's device functions for good
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.fake_cuda", "-p", "no:cacheprovider",
         "tests/test_compile_gpu.py",
         "tests/tracer/test_ops_parity.py::test_op_matches_torch_on_cuda",
         "tests/test_serialization.py::test_cuda_tensors_round_trip_and_map_location"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    # every test ran (none skipped for want of a GPU); the 2 expected failures are the ops
    # parity's known gap, on either device
    assert counts.get("passed", 0) >= 600 and "skipped" not in counts and \
        "failed" not in counts and counts.get("xfailed", 0) <= 2, summary
