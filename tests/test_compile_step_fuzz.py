"""Differential fuzzing of whole training steps in CI: random small models, losses,
optimizers, clipping and schedulers (tests/fuzz_steps.py), four steps each compiled by kiln,
eagerly by kiln and by PyTorch from the same weights. Compiled must equal eager (losses to
1e-5; parameters within 2e-5 or a few times kiln eager's distance to PyTorch, see
fuzz_steps' docstring), and no step may fall back to eager.

Longer sweeps: `python -m tests.fuzz_steps FIRST COUNT` (600 seeds ran clean when this was
written).
"""

import pytest

from tests.fuzz_steps import check, generate


@pytest.mark.parametrize("seed", range(24))
def test_compiled_training_step_equals_eager(seed):
    spec = generate(seed)
    problems = check(spec)
    assert not problems, f"{spec}\n" + "\n".join(problems)
