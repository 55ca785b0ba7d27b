"""Differential fuzzing of training steps by how they reach their state (tests/fuzz_state.py):
globals, closures, arguments, nested containers, trainer objects, bound methods, a global
registry, functools.partial; kiln's and hand-written optimizers whose state the first step
makes, an EMA of the weights, step counters, module buffers. Five steps compiled by kiln,
eagerly by kiln and by PyTorch must agree (losses to 1e-5, state as in fuzz_steps).

The seeds cover every path and every optimizer (seed 9k draws path k with optimizer k), EMA,
tensor and Python-int counters, a scheduler, a module buffer and batch norm, and what the
fuzzer found: a partial binding the state (7, 55), an int step in an optimizer's state (54,
55), a hand-written zero_grad's `p.grad = None` behind a registry list (38, 46). Seeds 64-71
draw the optimizer keeping its momentum on `p.momentum_buffer` (64, 66, 68, 71: through a
global, arguments, a trainer, a partial with a scheduler). Every step must replay, a step
whose state holds a Python number it changes each call too (a counter on an object, a
hand-written Adam's `state["step"] += 1`: lifted once seen changed, written back by each
replay); a hand-written optimizer retraces when a scheduler changes the learning rate it
reads.

Longer sweeps: `python -m tests.fuzz_state FIRST COUNT`.
"""

import pytest

from tests.fuzz_state import check, generate

SEEDS = [0, 9, 18, 27, 36, 45, 54, 63, 4, 5, 7, 12, 38, 46, 55, 64, 66, 68, 71]


@pytest.mark.parametrize("seed", SEEDS)
def test_compiled_step_reaching_its_state_equals_eager(seed):
    spec = generate(seed)
    outcome = check(spec)
    assert not outcome.problems, f"{spec}\n" + "\n".join(outcome.problems)
    assert "eager" not in outcome.kinds and "replay" in outcome.kinds, \
        (outcome.kinds, outcome.reasons)
