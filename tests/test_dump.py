"""`kiln dump script.py` and KILN_DUMP write readable listings of every compiled function."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "compiled_step.py"


def _run(args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def _check_listing(text: str):
    assert "== traced graph ==" in text
    lines = [ln for ln in text.splitlines() if re.match(r"\s+%\w+: \w+\[", ln)]
    assert len(lines) > 20
    for ln in lines:                       # one node per line: type, op and the user's line
        assert re.match(r"\s+%\w+: (f32|f64|i64|i32|b8)\[[\d,]*\] = \w+\(.*\)\s+# "
                        r"compiled_step\.py:\d+$", ln), ln
    assert "graph train_step(%x: f32[64,16], %y: i64[64], %w1: f32[16,32] [lifted]" in text
    assert "matmul(%x, %w1)" in text


def _check_provenance(text: str):
    """Composites and backward nodes print under group headers (the example's gelu is on line
    15, its log_softmax on 16), kernel comments name the scope, and index expressions come out
    simplified (issue 15)."""
    traced = text.split("== traced graph ==")[1].split("== inputs ==")[0]
    assert "  # gelu @ compiled_step.py:15\n    %" in traced
    assert "  # log_softmax @ compiled_step.py:16\n    %" in traced
    grads = re.findall(r"^ +# grad of %(\d+) (\w+) @ compiled_step\.py:(\d+)$", traced, re.M)
    assert {op for _, op, _ in grads} >= {"neg", "div", "sum", "exp", "log", "matmul", "tanh"}
    assert all(line in ("15", "16", "17") for _, _, line in grads)  # not loss.backward()'s 18
    # the gradients of a composite's nodes are grouped under the composite's gradient
    assert re.search(r"^  # grad of gelu @ compiled_step\.py:15\n    # grad of %\d+ mul @ "
                     r"compiled_step\.py:15\n      %", traced, re.M)
    groups = text.split("== fusion groups ==")[1].split("\n\n")[0]
    assert re.search(r"^  k\d+ fused_\w+\(.*\) -> \(.*\)    \[\d+ nodes: .*\]  from gelu", groups,
                     re.M)
    kernels = text.split("== generated kernels")[1]
    assert "// gelu @ compiled_step.py:15\n" in kernels
    assert re.search(r"//   %\d+ = tanh\(%\d+\)    \(compiled_step\.py:15\)", kernels)
    assert re.search(r"// grad of %\d+ \w+ @ compiled_step\.py:1[567]\n\s*//   %", kernels)
    assert "(0 + " not in kernels and " * 1)" not in kernels     # arange(0, n, 1) is the index
    assert not re.search(r"(\w+) // (\d+) \* \2 \+ \1 % \2", kernels)


def test_kiln_dump_writes_listing_dot_and_html(tmp_path):
    done = _run(["-m", "kiln", "dump", str(EXAMPLE), "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert "final loss" in done.stdout
    text = (tmp_path / "train_step.txt").read_text()
    _check_listing(text)
    _check_provenance(text)
    from kiln.runtime import c_build
    if c_build.compiler_problem() is None:     # 30 steps: the kernel trials are over
        choices = text.split("== kernels: generated C or NumPy, as the trial replays measured ==")
        assert len(choices) == 2, text[-2000:]
        assert re.search(r"forward k\d+\w*: runs as (generated C|NumPy \(array executor\)); "
                         r"trial replays: C [\d.]+ ms, NumPy [\d.]+ ms", choices[1])
    dot = (tmp_path / "train_step.dot").read_text()
    assert dot.startswith('digraph "train_step"') and "->" in dot
    assert (tmp_path / "train_step.html").read_text().startswith("<!doctype html>")
    svg = tmp_path / "train_step.svg"
    note = tmp_path / "train_step.svg.txt"
    assert svg.exists() or "Graphviz" in note.read_text()


def test_kiln_dump_env_var_for_a_normal_run(tmp_path):
    done = _run([str(EXAMPLE)], env={"KILN_DUMP": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    _check_listing((tmp_path / "train_step.txt").read_text())


def test_kiln_dump_rejects_unknown_format(tmp_path):
    done = _run(["-m", "kiln", "dump", str(EXAMPLE), "--format", "pdf"])
    assert done.returncode != 0 and "unknown format" in done.stderr


def test_kiln_dump_of_a_pytorch_script_dumps_its_torch_compile_functions(tmp_path):
    # a script written for PyTorch: its torch imports resolve to kiln, as under `kiln run`
    script = tmp_path / "torch_step.py"
    script.write_text(
        "import torch\n"
        "import torch.nn as nn\n"
        "model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "@torch.compile\n"
        "def step(x, y):\n"
        "    loss = nn.functional.cross_entropy(model(x), y)\n"
        "    opt.zero_grad()\n"
        "    loss.backward()\n"
        "    opt.step()\n"
        "    return loss\n"
        "for _ in range(3):\n"
        "    print(type(torch).__name__, torch.__name__, step(torch.randn(4, 8), "
        "torch.randint(0, 2, (4,))).item())\n")
    done = _run(["-m", "kiln", "dump", str(script), "--out", str(tmp_path / "out"),
                 "--format", "text"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("module kiln ") == 3
    text = (tmp_path / "out" / "step.txt").read_text()
    assert "== traced graph ==" in text and re.search(r"matmul\(%x, ", text)
    assert re.search(r"# torch_step\.py:7$", text, re.M)
    # --real-torch leaves torch to PyTorch: nothing of kiln's is compiled
    done = _run(["-m", "kiln", "dump", str(script), "--real-torch", "--out",
                 str(tmp_path / "real")])
    assert done.returncode == 1 and done.stdout.count("module torch ") == 3
    assert "no @kiln.compile (or torch.compile) function" in done.stdout
