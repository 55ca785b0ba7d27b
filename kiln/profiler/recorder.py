"""The profiler's hooks: while a Recording is active, every dispatched op, record_function range
and compiled call is timed into it.

The hooks cost nothing while no profiler records: `start` swaps the dispatcher slot every
primitive call already goes through (`P.dispatch`, installed by `kiln.tracer.dispatch`) for a
timing wrapper around it, and `CompiledFunction.__call__` likewise; `stop` puts both back.

Events are kept as plain tuples while recording, (name, category, start_ns, end_ns, self_ns,
input shapes or None, thread id); `kiln.profiler.events` turns them into FunctionEvents afterwards.
A range's self time is its duration less its direct children's, counted on the thread that ran
it: each thread keeps a stack of open ranges, each frame a list holding the time its children
took so far (and, with profile_memory, the bytes it and its children allocated: see
`kiln.profiler.memory`).

With `profile_memory` or `with_stack`, a second wrapper (`_traced_dispatch`) goes in instead of
`_timed_dispatch`, and events carry four more items: self and total bytes on the CPU, self and
total bytes on the device, and the user's stack (or None). The plain wrapper stays as it was.
"""

from __future__ import annotations

import contextlib
import threading
from time import perf_counter_ns

from kiln.ir.ops import P
from kiln.profiler import memory
from kiln.tracer import dispatch_mode
from kiln.tracer.tensor import Tensor

# categories, as Chrome's trace viewer shows them
OP = "cpu_op"                      # a dispatched primitive
ANNOTATION = "user_annotation"     # a record_function range (ProfilerStep#N too)
COMPILED = "kiln_compile"          # one call of a kiln.compile'd function

OP_PREFIX = "kiln::"               # an op event's name is "kiln::" + the primitive's name


class Recording:
    """The events of one trace, collected while it is the active one."""

    def __init__(self, record_shapes: bool, profile_memory: bool = False,
                 with_stack: bool = False):
        self.record_shapes = record_shapes
        self.profile_memory = profile_memory
        self.with_stack = with_stack
        self.extended = profile_memory or with_stack    # events carry memory and stacks
        self.allocations: list = []      # (time_ns, bytes, device): + allocated, - freed
        self.tracked: dict = {}          # id(array) -> weakref, for the arrays counted
        self.events: list[tuple] = []
        self.active = True
        self.origin_ns = perf_counter_ns()
        self.local = threading.local()       # .stack (open frames), .tid (the thread's OS id)

    def thread_stack(self) -> list:
        """This thread's stack of open frames (made on the thread's first event)."""
        local = self.local
        try:
            return local.stack
        except AttributeError:
            local.stack, local.tid = [], threading.get_native_id()
            return local.stack

    def open(self) -> tuple:
        """Open a range on this thread; returns the token `close` takes."""
        frame = [0, 0, 0, 0, 0]     # children's ns; self/children's cpu bytes; same on device
        self.thread_stack().append(frame)
        return frame, perf_counter_ns()

    def close(self, token: tuple, name: str, category: str, shapes) -> None:
        """Close a range opened by `open`, with any ranges still open inside it (a
        record_function entered and never exited), and record it."""
        end = perf_counter_ns()
        frame, start = token
        if not self.active:
            return
        stack = self.thread_stack()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is frame:
                break
        else:
            return                        # closed already (the trace restarted meanwhile)
        del stack[i:]
        duration = end - start
        if stack:
            stack[-1][0] += duration
        if not self.extended:
            self.events.append((name, category, start, end, duration - frame[0], shapes,
                                self.local.tid))
            return
        user = memory.user_stack() if self.with_stack else None
        self.events.append((name, category, start, end, duration - frame[0], shapes,
                            self.local.tid) + memory.close_frame(frame, stack) + (user,))


_ACTIVE: list = [None]       # the Recording hooks write to, or None
_SAVED: dict = {}            # what `start` replaced: "dispatch", "compiled_call"


def active() -> Recording | None:
    """The Recording in progress, or None."""
    return _ACTIVE[0]


def input_shapes(args) -> tuple:
    """The shape of each tensor argument; () for anything else. Tuples of ints, which the
    garbage collector stops tracking: a long trace of lists would make every collection
    walk all of them (`events` turns them into PyTorch's lists of lists)."""
    return tuple([a._data.shape if isinstance(a, Tensor) else () for a in args])


def _timed_dispatch(prim, args, attrs, device=None):
    """P.dispatch while recording: the dispatcher's call, timed as one op event."""
    rec = _ACTIVE[0]
    if rec is None:                       # another thread stopped the trace just now
        return _SAVED["dispatch"](prim, args, attrs, device)
    shapes = input_shapes(args) if rec.record_shapes else None
    stack = rec.thread_stack()
    frame = [0]
    stack.append(frame)
    start = perf_counter_ns()
    try:
        return _SAVED["dispatch"](prim, args, attrs, device)
    finally:
        end = perf_counter_ns()
        if stack and stack[-1] is frame:  # ops nest strictly; anything else is a stale stack
            stack.pop()
            duration = end - start
            if stack:
                stack[-1][0] += duration
            if rec.active:
                rec.events.append((prim.name, OP, start, end, duration - frame[0], shapes,
                                   rec.local.tid))


def _traced_dispatch(prim, args, attrs, device=None):
    """P.dispatch while recording memory or stacks: `_timed_dispatch`, plus the bytes the
    op's result newly holds (and frees that happen inside it) and the user's stack."""
    rec = _ACTIVE[0]
    if rec is None:
        return _SAVED["dispatch"](prim, args, attrs, device)
    shapes = input_shapes(args) if rec.record_shapes else None
    stack = rec.thread_stack()
    frame = [0, 0, 0, 0, 0]
    stack.append(frame)
    start = perf_counter_ns()
    out = None
    try:
        out = _SAVED["dispatch"](prim, args, attrs, device)
        return out
    finally:
        end = perf_counter_ns()
        if stack and stack[-1] is frame:
            stack.pop()
            duration = end - start
            if stack:
                stack[-1][0] += duration
            if rec.active:
                if rec.profile_memory and out is not None:
                    memory.count_result(rec, frame, args, out, end)
                user = memory.user_stack() if rec.with_stack else None
                rec.events.append((prim.name, OP, start, end, duration - frame[0], shapes,
                                   rec.local.tid) + memory.close_frame(frame, stack) + (user,))


def _timed_compiled_call(self, *args, **kwargs):
    """CompiledFunction.__call__ while recording: one "kiln.compile: <name>" range per call,
    around the replay (or the first call's trace and compile, whose ops appear inside it)."""
    call = _SAVED["compiled_call"]
    rec = _ACTIVE[0]
    if rec is None:
        return call(self, *args, **kwargs)
    fn = self.__dict__["fn"]
    name = "kiln.compile: " + getattr(fn, "__name__", type(fn).__name__)
    shapes = input_shapes(args) if rec.record_shapes else None
    token = rec.open()
    try:
        return call(self, *args, **kwargs)
    finally:
        rec.close(token, name, COMPILED, shapes)


def start(rec: Recording) -> None:
    """Make `rec` the active recording and install the hooks."""
    from kiln.compiler import CompiledFunction      # loaded with `import kiln` already
    if _ACTIVE[0] is not None:
        raise RuntimeError("kiln.profiler: a profiler is already recording; profilers do not "
                           "nest. Use record_function for a range inside the active one.")
    _SAVED["dispatch"] = P.dispatch
    _SAVED["compiled_call"] = CompiledFunction.__call__
    _ACTIVE[0] = rec
    P.dispatch = _traced_dispatch if rec.extended else _timed_dispatch
    CompiledFunction.__call__ = _timed_compiled_call
    dispatch_mode.note_observed()


def stop(rec: Recording) -> None:
    """End `rec` and put the dispatcher and CompiledFunction back as they were."""
    from kiln.compiler import CompiledFunction
    rec.active = False
    if _ACTIVE[0] is not rec:
        return
    _ACTIVE[0] = None
    wrapper = _traced_dispatch if rec.extended else _timed_dispatch
    if P.dispatch is wrapper:
        P.dispatch = _SAVED["dispatch"]
    else:                  # a FLOP counter's wrapper went on above it: leave its chain whole
        from kiln.profiler import op_hooks
        op_hooks.splice_out(wrapper, _SAVED["dispatch"])
    if CompiledFunction.__call__ is _timed_compiled_call:
        CompiledFunction.__call__ = _SAVED["compiled_call"]
    dispatch_mode.note_observed()


class record_function(contextlib.ContextDecorator):
    """A named range in the profile: `with record_function("model_inference"): ...`, or as a
    decorator. Ops run inside it are its children; its self time is what they leave over.
    Does nothing while no profiler records (entering it costs one check).
    """

    def __init__(self, name: str, args: str | None = None):
        self.name = name
        self.args = args          # PyTorch's optional string argument; kept, not recorded
        self._open: list = []     # (recording, token) per entry: a decorated function recurses

    def __enter__(self) -> record_function:
        rec = _ACTIVE[0]
        self._open.append((rec, None if rec is None else rec.open()))
        return self

    def __exit__(self, *exc) -> bool:
        rec, token = self._open.pop()
        if rec is not None:
            rec.close(token, self.name, ANNOTATION, () if rec.record_shapes else None)
        return False
