"""`kiln.profiler`: where the time goes, op by op (torch.profiler).

`profile` records every dispatched op ("kiln::<primitive>"), `record_function` range and
compiled call, with self and total CPU time, call counts and (record_shapes) input shapes;
`key_averages().table(...)` prints them, `export_chrome_trace` writes a trace for
chrome://tracing or Perfetto, and `schedule` with `prof.step()` records chosen training steps.
`profile_memory` and `with_stack` add bytes and user frames per op (`kiln.profiler.memory`).
While no profile records, kiln's dispatcher runs unchanged: the hooks are installed by
`profile` and removed when it stops.
"""

from kiln.profiler.chrome_trace import tensorboard_trace_handler  # noqa: F401
from kiln.profiler.events import EventList, FunctionEvent, FunctionEventAvg  # noqa: F401
from kiln.profiler.profile import ProfilerActivity, profile, supported_activities  # noqa: F401
from kiln.profiler.recorder import record_function  # noqa: F401
from kiln.profiler.schedule import ProfilerAction, schedule  # noqa: F401

__all__ = ["profile", "record_function", "ProfilerActivity", "ProfilerAction", "schedule",
           "tensorboard_trace_handler", "supported_activities", "EventList", "FunctionEvent",
           "FunctionEventAvg"]
