"""`python -m kiln run` of a PyTorch script written in the patterns of pytorch/examples' fx/
scripts (tests/scripts/standalone/fx_pattern.py): its printout (generated code, node origins,
results) is PyTorch's, with kiln's name for the framework."""

from pathlib import Path

from tests.test_kiln_run import kiln_run, torch_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "standalone" / "fx_pattern.py"


def as_kiln(torch_text: str) -> str:
    text = torch_text.replace("torch.", "kiln.")
    # kiln.arctan is kiln.atan (one function, printed by its own name), where torch has two
    text = text.replace("arctan = kiln.arctan(log);  log = None\n    return arctan",
                        "atan = kiln.atan(log);  log = None\n    return atan")
    # kiln.nn.LeakyReLU passes its slope to F.leaky_relu by position, torch's by keyword
    return text.replace("leaky_relu(cat, negative_slope = 0.2,", "leaky_relu(cat, 0.2,")


def test_fx_example_patterns_print_torchs_output_under_kiln_run(tmp_path):
    expected = torch_run(SCRIPT, cwd=tmp_path)
    done = kiln_run(SCRIPT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == as_kiln(expected)
    assert "Node _1_bn is from module 1.bn" in done.stdout
