"""The torch.compile tutorial and recipes (`compile_recipes_cases.py`), in a pytest process of
their own: TorchDynamo's state after the errors its reference runs raise on purpose would
otherwise stay with every later test of this process (see that file)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compile_recipes_match_torch_in_a_process_of_their_own():
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/scripts/compile_recipes_cases.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "4 passed" in out.stdout, out.stdout[-2000:]
