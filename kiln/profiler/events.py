"""A finished trace's events, their per-op averages and the table that prints them.

Times are microseconds (floats), as PyTorch reports them. An event's total CPU time is its
wall-clock duration on the thread that ran it; its self time is that less its direct children's
(the ops and ranges that ran inside it). With profile_memory, memory is in bytes: what an event
and the events inside it allocated less what was freed meanwhile (`cpu_memory_usage`, and
`device_memory_usage` for CuPy arrays), and its self part (`self_cpu_memory_usage`); frees
are negative (see `kiln.profiler.memory`). With with_stack, `stack` is the user's Python
frames at the event, innermost first.
"""

from __future__ import annotations

from kiln.profiler.recorder import OP, OP_PREFIX, Recording

# Every "ProfilerStep#N" range averages under one key, as in PyTorch's tables.
STEP_PREFIX, STEP_KEY = "ProfilerStep#", "ProfilerStep*"


class FunctionEvent:
    """One recorded range: an op call, a record_function range, or a compiled call."""

    __slots__ = ("name", "category", "thread", "start_us", "cpu_time_total",
                 "self_cpu_time_total", "input_shapes", "self_cpu_memory_usage",
                 "cpu_memory_usage", "self_device_memory_usage", "device_memory_usage",
                 "stack")
    count = 1

    def __init__(self, name: str, category: str, thread: int, start_us: float,
                 cpu_time_total: float, self_cpu_time_total: float, input_shapes: list,
                 memory: tuple = (0, 0, 0, 0), stack: list | None = None):
        self.name = name
        self.category = category        # "cpu_op", "user_annotation" or "kiln_compile"
        self.thread = thread            # the OS id of the thread that ran it
        self.start_us = start_us        # from the start of the trace
        self.cpu_time_total = cpu_time_total            # its duration
        self.self_cpu_time_total = self_cpu_time_total  # less its direct children's
        self.input_shapes = input_shapes                # per argument, [] if not a tensor
        (self.self_cpu_memory_usage, self.cpu_memory_usage, self.self_device_memory_usage,
         self.device_memory_usage) = memory             # bytes
        self.stack = stack if stack is not None else []

    @property
    def key(self) -> str:
        return self.name

    @property
    def end_us(self) -> float:
        return self.start_us + self.cpu_time_total

    @property
    def cpu_time(self) -> float:
        return self.cpu_time_total

    def __repr__(self) -> str:
        return (f"FunctionEvent(name={self.name!r}, start_us={self.start_us:.3f}, "
                f"cpu_time_total={self.cpu_time_total:.3f}, "
                f"self_cpu_time_total={self.self_cpu_time_total:.3f}, "
                f"input_shapes={self.input_shapes})")


class FunctionEventAvg:
    """The events of one key (and input shapes, when grouped by them), added up."""

    __slots__ = ("key", "count", "cpu_time_total", "self_cpu_time_total", "input_shapes",
                 "self_cpu_memory_usage", "cpu_memory_usage", "self_device_memory_usage",
                 "device_memory_usage", "stack")

    def __init__(self, key: str, input_shapes: list | None = None, stack: list | None = None):
        self.key = key
        self.count = 0
        self.cpu_time_total = 0.0
        self.self_cpu_time_total = 0.0
        self.input_shapes = input_shapes if input_shapes is not None else []  # when grouped
        self.self_cpu_memory_usage = self.cpu_memory_usage = 0
        self.self_device_memory_usage = self.device_memory_usage = 0
        self.stack = stack if stack is not None else []   # its first N frames, when grouped

    @property
    def cpu_time(self) -> float:
        """The average total CPU time of one call."""
        return self.cpu_time_total / self.count if self.count else 0.0

    def add(self, event) -> FunctionEventAvg:
        self.count += event.count
        self.cpu_time_total += event.cpu_time_total
        self.self_cpu_time_total += event.self_cpu_time_total
        self.self_cpu_memory_usage += event.self_cpu_memory_usage
        self.cpu_memory_usage += event.cpu_memory_usage
        self.self_device_memory_usage += event.self_device_memory_usage
        self.device_memory_usage += event.device_memory_usage
        return self

    def __repr__(self) -> str:
        return (f"FunctionEventAvg(key={self.key!r}, count={self.count}, "
                f"cpu_time_total={self.cpu_time_total:.3f}, "
                f"self_cpu_time_total={self.self_cpu_time_total:.3f}, "
                f"input_shapes={self.input_shapes})")


class EventList(list):
    """A list of FunctionEvents (`prof.events()`) or of their averages (`key_averages()`).
    `profile_memory` says whether memory was recorded (the table shows its columns then)."""

    def __init__(self, events=(), profile_memory: bool = False, with_stack: bool = False):
        super().__init__(events)
        self.profile_memory = profile_memory
        self.with_stack = with_stack

    def key_averages(self, group_by_input_shape: bool = False,
                     group_by_stack_n: int = 0) -> EventList:
        """One FunctionEventAvg per event name (and input shapes, if `group_by_input_shape`;
        and first `group_by_stack_n` stack frames, if that is positive), in order of first
        appearance."""
        groups: dict = {}
        for event in self:
            key = event.key
            if key.startswith(STEP_PREFIX) and key[len(STEP_PREFIX):].isdigit():
                key = STEP_KEY
            shapes = event.input_shapes if group_by_input_shape and event.input_shapes else []
            frames = event.stack[:group_by_stack_n] if group_by_stack_n > 0 else []
            group = (key, str(shapes) if group_by_input_shape else None, tuple(frames))
            avg = groups.get(group)
            if avg is None:
                avg = groups[group] = FunctionEventAvg(key, input_shapes=shapes, stack=frames)
            avg.add(event)
        return EventList(groups.values(), self.profile_memory, self.with_stack)

    def total_average(self) -> FunctionEventAvg:
        total = FunctionEventAvg("Total")
        for event in self:
            total.add(event)
        return total

    @property
    def self_cpu_time_total(self) -> float:
        """The CPU time the events cover, each microsecond once: the sum of self times."""
        return sum(e.self_cpu_time_total for e in self)

    def table(self, sort_by: str | None = None, row_limit: int = 100,
              max_src_column_width: int = 75, max_name_column_width: int = 55,
              max_shapes_column_width: int = 80, header: str | None = None,
              top_level_events_only: bool = False) -> str:
        """The events as a text table (PyTorch's columns): Name, Self CPU %, Self CPU,
        CPU total %, CPU total, CPU time avg, CPU Mem and Self CPU Mem (with profile_memory;
        CUDA Mem and Self CUDA Mem too when device memory was allocated), # of Calls, Input
        Shapes when the rows have them, and Source Location when they have stacks (each
        frame on a line of its own). Rows are sorted by `sort_by` (an attribute:
        cpu_time_total, self_cpu_time_total, cpu_time, count, cpu_memory_usage,
        self_cpu_memory_usage, ...), largest first, and cut at `row_limit`.
        `top_level_events_only` is accepted and ignored (kiln keeps no parent links)."""
        return format_table(self, sort_by, row_limit, max_name_column_width,
                            max_shapes_column_width, header,
                            getattr(self, "profile_memory", False), max_src_column_width)

    def export_chrome_trace(self, path: str) -> None:
        from kiln.profiler.chrome_trace import write_chrome_trace
        write_chrome_trace(self, path)

    def export_stacks(self, path: str, metric: str = "self_cpu_time_total") -> None:
        """Write one line per event with a stack and a positive `metric`, as torch does:
        its frames outermost first, joined by ";", a space, and the metric as an integer
        (microseconds for times): the input of flamegraph.pl and speedscope."""
        metric = metric.replace("cuda", "device")
        if metric not in _STACK_METRICS:
            raise ValueError(f"export_stacks(metric={metric!r}): metric should be one of "
                             f"{', '.join(_STACK_METRICS)}")
        if metric == "self_device_time_total":
            raise NotImplementedError("export_stacks(metric='self_cuda_time_total'): kiln "
                                      "does not measure device kernel times (no CUPTI)")
        blank = str.maketrans(" ;\t\n", "____")
        with open(path, "w") as f:
            for event in self:
                value = int(getattr(event, metric))
                if event.stack and value > 0:
                    frames = ";".join(s.translate(blank) for s in reversed(event.stack))
                    f.write(f"{frames} {value}\n")

    def __str__(self) -> str:
        return self.table()


def events_of(rec: Recording) -> EventList:
    """A finished Recording's events as FunctionEvents, in order of start time."""
    origin = rec.origin_ns
    out = EventList(profile_memory=rec.profile_memory, with_stack=rec.with_stack)
    # by start, and a range before what starts with it inside it
    for event in sorted(rec.events, key=lambda e: (e[2], -e[3])):
        name, category, start, end, self_ns, shapes, tid = event[:7]
        if category == OP:
            name = OP_PREFIX + name
        extra = {"memory": event[7:11], "stack": event[11]} if len(event) > 7 else {}
        out.append(FunctionEvent(name, category, tid, (start - origin) / 1000,
                                 (end - start) / 1000, self_ns / 1000,
                                 [list(s) for s in shapes] if shapes else [], **extra))
    return out


# ----------------------------------------------------------------------------- the table

_SORT_KEYS = ("cpu_time_total", "self_cpu_time_total", "cpu_time", "count",
              "cpu_memory_usage", "self_cpu_memory_usage", "device_memory_usage",
              "self_device_memory_usage")
_STACK_METRICS = ("self_cpu_time_total", "self_device_time_total")
# PyTorch sort keys for what kiln does not measure, and what the table sorts by instead
_UNMEASURED = {
    "cuda_time_total": "cpu_time_total", "device_time_total": "cpu_time_total",
    "self_cuda_time_total": "self_cpu_time_total",
    "self_device_time_total": "self_cpu_time_total",
    "cuda_time": "cpu_time", "device_time": "cpu_time",
    "flops": "cpu_time_total",
}
_NUMBER_WIDTH = 12


def format_time(us: float) -> str:
    """A duration in microseconds as the table prints it: 1.234s, 5.678ms or 9.012us."""
    if us >= 1e6:
        return f"{us / 1e6:.3f}s"
    if us >= 1e3:
        return f"{us / 1e3:.3f}ms"
    return f"{us:.3f}us"


def _fit(text: str, width: int) -> str:
    if len(text) > width:
        text = text[:max(width - 3, 0)] + "..."
    return text.rjust(width)


def format_memory(nbytes: int) -> str:
    """Bytes as the table prints them: 4.00 KB, 1.50 MB, -8.00 KB or 12 B (1 KB = 1024 B)."""
    for unit, size in (("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{nbytes} B"


def _fit_source(frame: str, width: int) -> str:
    """A stack frame cut from the left to `width`, as torch trims paths."""
    if len(frame) > width:
        frame = "..." + frame[len(frame) - width + 3:]
    return frame.ljust(width)


def format_table(rows, sort_by: str | None, row_limit: int | None, max_name_width: int,
                 max_shapes_width: int, header: str | None = None,
                 profile_memory: bool = False, max_src_width: int = 75) -> str:
    note = None
    if sort_by is not None:
        sort_by = sort_by.replace("cuda_memory", "device_memory")
    if sort_by in _UNMEASURED:
        note = f"kiln does not measure {sort_by}; sorted by {_UNMEASURED[sort_by]} instead"
        sort_by = _UNMEASURED[sort_by]
    elif sort_by is not None and sort_by not in _SORT_KEYS:
        raise ValueError(f"table(sort_by={sort_by!r}): sort by one of {', '.join(_SORT_KEYS)}")
    rows = list(rows)
    total_self = sum(r.self_cpu_time_total for r in rows)
    if sort_by is not None:
        rows.sort(key=lambda r: getattr(r, sort_by), reverse=True)
    if row_limit is not None and row_limit > 0:
        rows = rows[:row_limit]
    with_shapes = any(r.input_shapes for r in rows)

    def percent(us: float) -> str:
        return f"{100 * us / total_self:.2f}%" if total_self else "0.00%"

    names = [r.key for r in rows]
    name_width = min(max((len(n) for n in names), default=4) + 4, max_name_width)
    widths = [max(name_width, 4)] + [_NUMBER_WIDTH] * 5
    titles = ["Name", "Self CPU %", "Self CPU", "CPU total %", "CPU total", "CPU time avg"]
    cells = [[r.key, percent(r.self_cpu_time_total), format_time(r.self_cpu_time_total),
              percent(r.cpu_time_total), format_time(r.cpu_time_total), format_time(r.cpu_time)]
             for r in rows]
    if profile_memory:
        _memory_columns(rows, titles, widths, cells)
    titles.append("# of Calls")
    widths.append(_NUMBER_WIDTH)
    for row, r in zip(cells, rows):
        row.append(str(r.count))
    if with_shapes:
        shapes = [str(r.input_shapes) for r in rows]
        widths.append(min(max(len(s) for s in shapes) + 4, max_shapes_width))
        titles.append("Input Shapes")
        for row, s in zip(cells, shapes):
            row.append(s)

    stacks = [r.stack for r in rows if r.stack]
    src_width = min(max(len(f) for s in stacks for f in s) + 4, max_src_width) if stacks else 0
    rule = "  ".join("-" * w for w in widths + ([src_width] if stacks else []))
    lines = []
    if header is not None:
        lines += ["=" * len(rule), header]
    head = "  ".join(_fit(t, w) for t, w in zip(titles, widths))
    lines += [rule, head + ("  " + _fit_source("Source Location", src_width) if stacks else ""),
              rule]
    for r, row in zip(rows, cells):
        line = "  ".join(_fit(c, w) for c, w in zip(row, widths))
        if not stacks:
            lines.append(line)
            continue
        lines.append(line + "  " + _fit_source(r.stack[0] if r.stack else "", src_width))
        blank = "  ".join(" " * w for w in widths)
        lines += [blank + "  " + _fit_source(f, src_width) for f in r.stack[1:]]
        if r.stack:
            lines.append(blank + "  " + " " * src_width)
    lines += [rule, f"Self CPU time total: {format_time(total_self)}"]
    if note is not None:
        lines.append(f"({note})")
    return "\n".join(lines) + "\n"


def _memory_columns(rows: list, titles: list, widths: list, cells: list) -> None:
    """Add CPU Mem and Self CPU Mem, and CUDA Mem and Self CUDA Mem when any row allocated
    device memory, as torch's table shows them."""
    columns = [("CPU Mem", "cpu_memory_usage"), ("Self CPU Mem", "self_cpu_memory_usage")]
    if any(r.self_device_memory_usage > 0 for r in rows):
        columns += [("CUDA Mem", "device_memory_usage"),
                    ("Self CUDA Mem", "self_device_memory_usage")]
    for title, attr in columns:
        titles.append(title)
        widths.append(max(_NUMBER_WIDTH, len(title)))
        for row, r in zip(cells, rows):
            row.append(format_memory(getattr(r, attr)))
