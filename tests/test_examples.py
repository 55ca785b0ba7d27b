"""Run each example as a user would and check the numbers it prints meet its promises."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    """The example's stdout, trained for fewer epochs (KILN_EXAMPLE_QUICK=1)."""
    env = dict(os.environ, KILN_EXAMPLE_QUICK="1")
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def metric(stdout: str, name: str) -> float:
    found = re.findall(rf"^{name}\s+([0-9.]+)$", stdout, flags=re.MULTILINE)
    assert found, f"no '{name}' line in the metrics table:\n{stdout}"
    return float(found[-1])


@pytest.fixture(scope="module")
def digits_eager() -> str:
    """digits_cnn.py's eager run, one for the two tests that read its output (a string)."""
    return run_example("digits_cnn.py")


def test_digits_cnn_reaches_97_percent_held_out(digits_eager):
    assert metric(digits_eager, "accuracy") >= 0.97
    assert metric(digits_eager, "f1") >= 0.96


def test_digits_cnn_compiled_with_return_loss_matches_eager(digits_eager):
    """The same training, its step compiled (`return loss`, a scheduler per epoch, `.item()` for
    logging): the same training losses (to rounding, which compounds over ~130 Adam steps) and
    the same held-out accuracy, to two digits in 450."""
    compiled = run_example("digits_cnn.py", "--compile")
    assert "training step compiled" in compiled
    per_epoch = re.compile(r"train loss ([0-9.]+)  held-out", re.MULTILINE)
    losses = [float(v) for v in per_epoch.findall(compiled)]
    assert len(losses) >= 6
    eager_losses = [float(v) for v in per_epoch.findall(digits_eager)]
    np.testing.assert_allclose(losses, eager_losses, rtol=0.02)
    assert abs(metric(compiled, "accuracy") - metric(digits_eager, "accuracy")) <= 2 / 450
    assert metric(compiled, "accuracy") >= 0.97


def test_breast_cancer_bce_reaches_95_percent_held_out():
    out = run_example("breast_cancer_bce.py")
    assert metric(out, "accuracy") >= 0.95
    assert metric(out, "f1") >= 0.95


def test_char_rnn_loss_falls_and_it_samples_text():
    out = run_example("char_rnn.py")
    losses = [float(v) for v in re.findall(r"^epoch\s+\d+\s+loss ([0-9.]+)$", out, re.MULTILINE)]
    assert len(losses) >= 3
    assert losses[-1] < 0.5 * losses[0], losses
    sample = out.split("sample:\n", 1)[1]
    assert sample.startswith("Beautiful is ") and len(sample) > 200


def test_readme_demo_command_trains_the_digits_cnn():
    env = dict(os.environ, KILN_EXAMPLE_QUICK="1")
    result = subprocess.run([sys.executable, "-m", "kiln", "demo"], capture_output=True,
                            text=True, env=env, timeout=300, cwd=EXAMPLES.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert metric(result.stdout, "accuracy") >= 0.97
