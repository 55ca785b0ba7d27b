"""Differential fuzzing in CI: fifty seeded random programs (tests/codegen/fuzz_programs.py),
each run eagerly, on PyTorch, and compiled for the C and NumPy backends (a trace, then replays
on fresh inputs); every compiled result must equal eager, and eager must equal PyTorch.

Longer runs: `python -m tests.codegen.fuzz_programs FIRST COUNT` prints each failing seed with
its program minimized; a case found that way goes to test_c_fuzz_regressions.py.
"""

from __future__ import annotations

import pytest

from kiln.runtime import c_build
from tests.codegen.fuzz_programs import check, generate


@pytest.mark.parametrize("seed", range(50))
def test_compiled_equals_eager(seed, monkeypatch):
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")      # every C kernel runs: no NumPy trials
    backends = ("c", "numpy") if c_build.compiler_problem() is None else ("numpy",)
    program = generate(seed)
    problems = check(program, seed, backends=backends)
    assert not problems, f"seed {seed}:\n{program}\n" + "\n".join(problems)
