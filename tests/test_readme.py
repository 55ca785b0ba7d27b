"""README's Python snippets run as written: each block in its own process (a block whose first
line says `# python -m kiln.distributed.run --nproc-per-node N ...` runs under the launcher,
on the N ranks it names)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_python_block_runs(number, tmp_path):
    code = BLOCKS[number]
    script = tmp_path / f"readme_block_{number}.py"
    script.write_text(code)
    if code.startswith("# python -m kiln.distributed.run"):
        pytest.importorskip("mpi4py")
        ranks = re.search(r"--nproc-per-node (\d+)", code.splitlines()[0])
        cmd = [sys.executable, "-m", "kiln.distributed.run", "--nproc-per-node",
               ranks.group(1) if ranks else "2", str(script)]
    else:
        cmd = [sys.executable, str(script)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                         env=env)
    assert out.returncode == 0, f"README block {number}:\n{code}\n{out.stdout[-2000:]}" \
                                f"{out.stderr[-3000:]}"


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4
