"""When a scheduled profile records: `schedule(wait, warmup, active, ...)` maps a step number
to a ProfilerAction, as torch.profiler.schedule does."""

from __future__ import annotations

import enum
import warnings
from typing import Callable


class ProfilerAction(enum.Enum):
    """What the profiler does during one step."""

    NONE = 0               # not recording
    WARMUP = 1             # about to record (kiln has nothing to warm up: as NONE)
    RECORD = 2             # recording
    RECORD_AND_SAVE = 3    # recording; the trace is finished (on_trace_ready) at the next step


RECORDING = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)


def schedule(*, wait: int, warmup: int, active: int, repeat: int = 0, skip_first: int = 0,
             skip_first_wait: int = 0) -> Callable[[int], ProfilerAction]:
    """A schedule for `profile(schedule=...)`: after `skip_first` steps, cycles of `wait`
    idle steps, `warmup` steps and `active` recorded steps, `repeat` cycles (0: until the
    profile ends). The trace of each cycle's active steps goes to `on_trace_ready` at the step
    after the last one. `skip_first_wait=1` skips the first cycle's wait steps.
    """
    if wait < 0 or warmup < 0 or active <= 0 or repeat < 0 or skip_first < 0:
        raise ValueError(f"schedule(wait={wait}, warmup={warmup}, active={active}, "
                         f"repeat={repeat}, skip_first={skip_first}): active must be positive "
                         "and the others non-negative")
    if warmup == 0:
        warnings.warn("kiln.profiler.schedule: warmup=0; PyTorch recommends a warmup step, "
                      "since its first recorded step carries start-up costs", stacklevel=2)
    cycle = wait + warmup + active

    def action(step: int) -> ProfilerAction:
        if step < 0:
            raise ValueError(f"schedule: step {step} is negative")
        if step < skip_first:
            return ProfilerAction.NONE
        step -= skip_first
        if skip_first_wait:
            step += wait
        if repeat and step // cycle >= repeat:
            return ProfilerAction.NONE
        at = step % cycle
        if at < wait:
            return ProfilerAction.NONE
        if at < wait + warmup:
            return ProfilerAction.WARMUP
        return ProfilerAction.RECORD if at < cycle - 1 else ProfilerAction.RECORD_AND_SAVE

    return action


def always_record(step: int) -> ProfilerAction:
    """The schedule of a profile without one: record from start to stop."""
    return ProfilerAction.RECORD
