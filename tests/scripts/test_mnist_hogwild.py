"""pytorch/examples mnist_hogwild: a model in shared memory trained by forked
torch.multiprocessing processes. One process without dropout is deterministic: its losses and
the parent's test loss (which sees the child's updates through shared memory) agree with
torch's to rtol 1e-5. Two processes race (hogwild), so only what must hold is checked.

Each case runs in a new interpreter with OMP_NUM_THREADS=1: PyTorch's child, forked after its
parent's OpenMP threads started, hung in its first convolution (GNU OpenMP is not fork-safe;
kiln's C runtime is, see tests/runtime/test_c_runtime.py); a timeout turns any hang into a
failure."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _in_a_new_process(code: str) -> None:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_hogwild_one_process_matches_torch():
    _in_a_new_process("""
        from tests.scripts.test_recipes import same_run
        t, k = same_run("mnist_hogwild", dropout=False)
        assert abs(k["test_loss"] / t["test_loss"] - 1) < 1e-5, (k["test_loss"], t["test_loss"])
        assert k["values"] == t["values"] and k["values"]["shared"] and k["values"]["changed"]
    """)


def test_hogwild_two_processes_share_their_updates():
    _in_a_new_process("""
        import math
        from tests.scripts.harness import run
        k = run("mnist_hogwild", "kiln", seed=0, num_processes=2)
        assert k["values"]["exitcodes"] == "0,0" and k["values"]["shared"], k["values"]
        assert all(loss > 0 for loss in k["losses"])        # both children logged every step
        assert k["test_loss"] < math.log(10)                 # below chance: the parent learned
    """)
