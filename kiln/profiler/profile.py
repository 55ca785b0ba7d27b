"""`kiln.profiler.profile`: the context manager that records traces, on a schedule or from start
to stop, and hands each finished one to `on_trace_ready`."""

from __future__ import annotations

import enum
import warnings
from typing import Callable, Iterable

from kiln.profiler import recorder
from kiln.profiler.events import STEP_PREFIX, EventList, events_of
from kiln.profiler.schedule import RECORDING, ProfilerAction, always_record


class ProfilerActivity(enum.Enum):
    """What to profile. kiln records CPU-side times for both: on a cuda device an op's event
    is the time its dispatch took on the CPU (CuPy launches kernels asynchronously), not the
    kernel's time on the device, which kiln does not measure (it has no CUPTI)."""

    CPU = "cpu"
    CUDA = "cuda"


def supported_activities() -> set:
    """The activities `profile` accepts (CUDA events are CPU-side dispatch times)."""
    return {ProfilerActivity.CPU, ProfilerActivity.CUDA}


_OWNER: list = [None]       # the profile between start() and stop(), if any: they do not nest


class profile:
    """Profile the ops kiln runs, as torch.profiler.profile does.

    ```
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with record_function("model_inference"):
            model(inputs)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10))
    ```

    What is recorded, from every thread: each dispatched primitive, named "kiln::<primitive>"
    (kiln's own op names, not ATen's: `a @ b` is "kiln::matmul", a conv2d on the CPU
    "kiln::unfold_matmul" among its reshapes); each `record_function` range; each call of a
    `kiln.compile`d function, as one "kiln.compile: <function name>" range (on its first call
    the ops it traces appear inside it; a replay runs compiled kernels, which have no op
    events). With a schedule, each step is a "ProfilerStep#N" range. Times are CPU wall-clock
    times: with `ProfilerActivity.CUDA`, an op on a cuda tensor is timed as its CPU-side
    dispatch; device kernel times are not measured (kiln has no CUPTI).

    The eager fast paths of a full sum or mean and of softmax/log_softmax take the dispatcher
    while a profiler records, so they are seen. Not recorded: the other paths that skip the
    dispatcher (cuda max pooling and fused RNN cells; an optimizer's in-place updates, `fill_`,
    `zero_`, `copy_` and plain `x[i] = v` writes) show up only as time in the enclosing
    range's self time; wrap them in `record_function` to name them.
    FLOPs and modules are not recorded; asking for them warns.

    With `profile_memory`, each op's event carries the bytes its result newly holds and the
    frees that happen inside it (see `kiln.profiler.memory`: an op's temporaries are not
    seen), the table gains CPU Mem / Self CPU Mem columns, and
    `export_memory_timeline` writes them over time. With `with_stack`, each event carries the
    user's Python frames (kiln's own left out): `export_stacks`, `key_averages(
    group_by_stack_n=N)` and the table's Source Location column.

    Args:
        activities: ProfilerActivity.CPU and/or CUDA (both record CPU-side times).
        schedule: step -> ProfilerAction (see `kiln.profiler.schedule`); with one, recording
            follows `prof.step()` calls. Without, everything from start to stop is one trace.
        on_trace_ready: called with this profile when a trace finishes.
        record_shapes: record each op's input shapes (`key_averages(group_by_input_shape=True)`).
        profile_memory: record the bytes each op allocates and frees.
        with_stack: record the user's Python stack at each op.
    """

    def __init__(self, *, activities: Iterable[ProfilerActivity] | None = None,
                 schedule: Callable[[int], ProfilerAction] | None = None,
                 on_trace_ready: Callable | None = None, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False,
                 with_flops: bool = False, with_modules: bool = False,
                 experimental_config=None, execution_trace_observer=None,
                 acc_events: bool = False, use_cuda: bool | None = None,
                 custom_trace_id_callback=None, post_processing_timeout_s=None):
        activities = set(activities if activities is not None else supported_activities())
        if use_cuda:
            activities.add(ProfilerActivity.CUDA)
        for a in activities:
            if not isinstance(a, ProfilerActivity):
                raise ValueError(f"profile(activities=...): {a!r} is not a ProfilerActivity; "
                                 "kiln profiles ProfilerActivity.CPU and ProfilerActivity.CUDA")
        unrecorded = [name for name, on in (("with_flops", with_flops),
                                            ("with_modules", with_modules)) if on]
        if unrecorded:
            warnings.warn(f"kiln.profiler.profile: {', '.join(unrecorded)} not recorded; kiln "
                          "records op times, call counts, input shapes, memory and stacks",
                          stacklevel=2)
        self.activities = activities
        self.schedule = schedule if schedule is not None else always_record
        self.record_steps = schedule is not None     # "ProfilerStep#N" ranges
        self.on_trace_ready = on_trace_ready
        self.record_shapes = record_shapes
        self.profile_memory = profile_memory
        self.with_stack = with_stack
        self.step_num = 0
        self.current_action = None
        self._recording: recorder.Recording | None = None    # the trace being recorded
        self._finished: recorder.Recording | None = None     # the last trace finished
        self._events: EventList | None = None                # ... as events, made on demand
        self._step_range = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> profile:
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        if _OWNER[0] is not None:
            raise RuntimeError("kiln.profiler: a profile is already running; profiles do not "
                               "nest. Use record_function for a range inside the running one.")
        _OWNER[0] = self
        try:
            self.step_num = 0
            self.current_action = self.schedule(0)
            self._transit(None, self.current_action)
        except BaseException:
            self._end_recording()
            _OWNER[0] = None
            raise

    def stop(self) -> None:
        """End the profile: a trace being recorded finishes (on_trace_ready is called)."""
        if _OWNER[0] is not self:
            return
        try:
            self._transit(self.current_action, None)
        finally:
            self._end_recording()      # even if on_trace_ready raised: no hook stays behind
            self.current_action = None
            _OWNER[0] = None

    def step(self) -> None:
        """Mark the end of a training step; the schedule decides what the next one records."""
        if _OWNER[0] is not self:
            raise RuntimeError("kiln.profiler: profile.step() outside the profile's `with` "
                               "block (or before start())")
        previous = self.current_action
        self.step_num += 1
        self.current_action = self.schedule(self.step_num)
        self._transit(previous, self.current_action)

    def _transit(self, previous: ProfilerAction | None, action: ProfilerAction | None) -> None:
        """Do what moving from one step's action to the next asks: finish the trace after a
        RECORD_AND_SAVE step (or a RECORD step the schedule does not follow with a
        RECORD_AND_SAVE), and begin one at a recording step."""
        self._close_step_range()
        if previous in RECORDING:
            if previous is ProfilerAction.RECORD and action not in RECORDING and \
                    action is not None:
                warnings.warn("kiln.profiler: the schedule went from RECORD to "
                              f"{action.name} without RECORD_AND_SAVE; the trace finishes "
                              "here", stacklevel=3)
            if previous is ProfilerAction.RECORD_AND_SAVE or action not in RECORDING:
                self._finish_trace()
        if action in RECORDING:
            if self._recording is None:
                self._recording = recorder.Recording(self.record_shapes, self.profile_memory,
                                                     self.with_stack)
                recorder.start(self._recording)
            if self.record_steps:
                rec = self._recording
                self._step_range = (rec, rec.open(), f"{STEP_PREFIX}{self.step_num}")

    def _close_step_range(self) -> None:
        if self._step_range is not None:
            rec, token, name = self._step_range
            self._step_range = None
            rec.close(token, name, recorder.ANNOTATION, () if rec.record_shapes else None)

    def _end_recording(self) -> recorder.Recording | None:
        self._close_step_range()
        rec, self._recording = self._recording, None
        if rec is not None:
            recorder.stop(rec)
        return rec

    def _finish_trace(self) -> None:
        rec = self._end_recording()
        if rec is None:
            return
        self._finished, self._events = rec, None
        if self.on_trace_ready is not None:
            self.on_trace_ready(self)

    # ------------------------------------------------------------------ results

    def events(self) -> EventList:
        """The last finished trace's events, in order of start time."""
        if self._finished is None:
            if self._recording is not None:
                raise RuntimeError("kiln.profiler: the trace is still being recorded; read the "
                                   "results after the `with` block or in on_trace_ready")
            return EventList()
        if self._events is None:
            self._events = events_of(self._finished)
        return self._events

    def key_averages(self, group_by_input_shape: bool = False, group_by_stack_n: int = 0,
                     group_by_overload_name: bool = False) -> EventList:
        """Per-op averages of the last finished trace (see EventList.key_averages)."""
        return self.events().key_averages(group_by_input_shape, group_by_stack_n)

    def export_chrome_trace(self, path: str) -> None:
        """Write the last finished trace to `path` as Chrome trace JSON."""
        self.events().export_chrome_trace(path)

    def export_stacks(self, path: str, metric: str = "self_cpu_time_total") -> None:
        """Write the last trace's stacks for a flame graph (see EventList.export_stacks)."""
        if not self.with_stack:
            raise RuntimeError("kiln.profiler: export_stacks() needs profile(with_stack=True)")
        self.events().export_stacks(path, metric)

    def export_memory_timeline(self, path: str, device: str | None = None) -> None:
        """Write the bytes the last trace's ops held over time on `device` (default "cpu") as
        torch's JSON: `[times_us, sizes]`, one row of sizes per time (see
        `kiln.profiler.memory_timeline`)."""
        from kiln.profiler.memory_timeline import write_memory_timeline
        if not self.profile_memory:
            raise RuntimeError("kiln.profiler: export_memory_timeline() needs "
                               "profile(profile_memory=True)")
        if self._finished is None:
            raise RuntimeError("kiln.profiler: export_memory_timeline() before a trace finished")
        write_memory_timeline(self._finished, path, device)

    @property
    def self_cpu_time_total(self) -> float:
        return self.events().self_cpu_time_total
