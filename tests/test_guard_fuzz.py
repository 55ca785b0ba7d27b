"""Random worlds whose Python state changes between calls (tests/fuzz_guards.py): a compiled
call equals the eager one on every call, however the state it reads is reached and changed.

Longer runs: `python -m tests.fuzz_guards FIRST COUNT` prints each failing world's source; a
stale answer found that way goes to test_compile_guards.py as a named case.
"""

from __future__ import annotations

import pytest

from tests.fuzz_guards import CALLS, check, generate, needless

# seeds whose worlds replayed stale before their fix (defaults, objects in list arguments,
# subclass shadows, partial, state deep down), then a plain range
FOUND = [7, 12, 18, 19, 27, 28, 31, 32, 381, 699, 1264]


@pytest.mark.parametrize("seed", FOUND + list(range(100, 180)))
def test_compiled_equals_eager_as_the_world_changes(seed):
    world = generate(seed)
    problems, outcome = check(world)
    assert not problems, f"{world}\n" + "\n".join(problems)
    assert len(outcome.kinds) == CALLS


def test_unchanged_worlds_mostly_replay():
    """A call after one that changed nothing replays (a retrace is slow, not wrong: a few
    paths still retrace, see the sweep's report)."""
    quiet = wasted = 0
    for seed in range(40):
        world = generate(seed)
        _, outcome = check(world)
        quiet += sum(1 for i in range(1, CALLS) if not world.mutations[i])
        wasted += len(needless(world, outcome))
    assert quiet > 20 and wasted <= quiet // 10, (quiet, wasted)
