"""Random worlds whose Python state changes between calls (tests/fuzz_guards.py): a compiled
call equals the eager one on every call, however the state it reads is reached and changed.

Longer runs: `python -m tests.fuzz_guards FIRST COUNT` prints each failing world's source; a
stale answer found that way goes to test_compile_guards.py as a named case.
"""

from __future__ import annotations

import pytest

from tests.fuzz_guards import CALLS, check, generate, needless

# (the stale replays the sweeps found are named cases in test_compile_guards.py)
@pytest.mark.parametrize("seed", range(70))
def test_compiled_equals_eager_as_the_world_changes(seed):
    world = generate(seed)
    problems, outcome = check(world)
    assert not problems, f"{world}\n" + "\n".join(problems)
    assert len(outcome.kinds) == CALLS


def test_a_call_after_no_change_replays():
    """A call after one that changed nothing replays, never traces again (a change to state
    the call does not read may still retrace: slow, not wrong; the sweep reports those)."""
    quiet = 0
    for seed in range(40):
        world = generate(seed)
        world.harmless = set()
        _, outcome = check(world)
        quiet += sum(1 for i in range(1, CALLS) if not world.mutations[i])
        assert not needless(world, outcome), f"{world}{outcome.kinds}"
    assert quiet > 20


# worlds whose call after a change to state it does not read traced again, and now replays: a
# module's `training` it never read, an unset slot, a namespace's other attribute
@pytest.mark.parametrize("seed", [81, 106, 129, 163, 108, 166, 272, 690, 126, 168, 289, 420])
def test_a_change_the_call_cannot_read_replays(seed):
    world = generate(seed)
    problems, outcome = check(world)
    assert not problems, f"{world}\n" + "\n".join(problems)
    assert not needless(world, outcome), f"{world}{outcome.kinds}{outcome.reasons}"
