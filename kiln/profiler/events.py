"""A finished trace's events, their per-op averages and the table that prints them.

Times are microseconds (floats), as PyTorch reports them. An event's total CPU time is its
wall-clock duration on the thread that ran it; its self time is that less its direct children's
(the ops and ranges that ran inside it).
"""

from __future__ import annotations

from kiln.profiler.recorder import OP, OP_PREFIX, Recording

# Every "ProfilerStep#N" range averages under one key, as in PyTorch's tables.
STEP_PREFIX, STEP_KEY = "ProfilerStep#", "ProfilerStep*"


class FunctionEvent:
    """One recorded range: an op call, a record_function range, or a compiled call."""

    __slots__ = ("name", "category", "thread", "start_us", "cpu_time_total",
                 "self_cpu_time_total", "input_shapes")
    count = 1

    def __init__(self, name: str, category: str, thread: int, start_us: float,
                 cpu_time_total: float, self_cpu_time_total: float, input_shapes: list):
        self.name = name
        self.category = category        # "cpu_op", "user_annotation" or "kiln_compile"
        self.thread = thread            # the OS id of the thread that ran it
        self.start_us = start_us        # from the start of the trace
        self.cpu_time_total = cpu_time_total            # its duration
        self.self_cpu_time_total = self_cpu_time_total  # less its direct children's
        self.input_shapes = input_shapes                # per argument, [] if not a tensor

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

    __slots__ = ("key", "count", "cpu_time_total", "self_cpu_time_total", "input_shapes")

    def __init__(self, key: str, input_shapes: list | None = None):
        self.key = key
        self.count = 0
        self.cpu_time_total = 0.0
        self.self_cpu_time_total = 0.0
        self.input_shapes = input_shapes if input_shapes is not None else []  # when grouped

    @property
    def cpu_time(self) -> float:
        """The average total CPU time of one call."""
        return self.cpu_time_total / self.count if self.count else 0.0

    def add(self, event) -> FunctionEventAvg:
        self.count += event.count
        self.cpu_time_total += event.cpu_time_total
        self.self_cpu_time_total += event.self_cpu_time_total
        return self

    def __repr__(self) -> str:
        return (f"FunctionEventAvg(key={self.key!r}, count={self.count}, "
                f"cpu_time_total={self.cpu_time_total:.3f}, "
                f"self_cpu_time_total={self.self_cpu_time_total:.3f}, "
                f"input_shapes={self.input_shapes})")


class EventList(list):
    """A list of FunctionEvents (`prof.events()`) or of their averages (`key_averages()`)."""

    def key_averages(self, group_by_input_shape: bool = False,
                     group_by_stack_n: int = 0) -> EventList:
        """One FunctionEventAvg per event name (and input shapes, if `group_by_input_shape`),
        in order of first appearance. `group_by_stack_n` is accepted; stacks are not recorded.
        """
        groups: dict = {}
        for event in self:
            key = event.key
            if key.startswith(STEP_PREFIX) and key[len(STEP_PREFIX):].isdigit():
                key = STEP_KEY
            shapes = event.input_shapes if group_by_input_shape and event.input_shapes else []
            group = (key, str(shapes)) if group_by_input_shape else key
            avg = groups.get(group)
            if avg is None:
                avg = groups[group] = FunctionEventAvg(key, input_shapes=shapes)
            avg.add(event)
        return EventList(groups.values())

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
        CPU total %, CPU total, CPU time avg, # of Calls, and Input Shapes when the rows have
        them. Rows are sorted by `sort_by` (an attribute: cpu_time_total, self_cpu_time_total,
        cpu_time, count), largest first, and cut at `row_limit`. `max_src_column_width` and
        `top_level_events_only` are accepted and ignored (kiln records no stacks or parents)."""
        return format_table(self, sort_by, row_limit, max_name_column_width,
                            max_shapes_column_width, header)

    def export_chrome_trace(self, path: str) -> None:
        from kiln.profiler.chrome_trace import write_chrome_trace
        write_chrome_trace(self, path)

    def __str__(self) -> str:
        return self.table()


def events_of(rec: Recording) -> EventList:
    """A finished Recording's events as FunctionEvents, in order of start time."""
    origin = rec.origin_ns
    out = EventList()
    # by start, and a range before what starts with it inside it
    for name, category, start, end, self_ns, shapes, tid in sorted(
            rec.events, key=lambda e: (e[2], -e[3])):
        if category == OP:
            name = OP_PREFIX + name
        out.append(FunctionEvent(name, category, tid, (start - origin) / 1000,
                                 (end - start) / 1000, self_ns / 1000,
                                 [list(s) for s in shapes] if shapes else []))
    return out


# ----------------------------------------------------------------------------- the table

_SORT_KEYS = ("cpu_time_total", "self_cpu_time_total", "cpu_time", "count")
# PyTorch sort keys for what kiln does not measure, and what the table sorts by instead
_UNMEASURED = {
    "cuda_time_total": "cpu_time_total", "device_time_total": "cpu_time_total",
    "self_cuda_time_total": "self_cpu_time_total",
    "self_device_time_total": "self_cpu_time_total",
    "cuda_time": "cpu_time", "device_time": "cpu_time",
    "cpu_memory_usage": "cpu_time_total", "self_cpu_memory_usage": "self_cpu_time_total",
    "cuda_memory_usage": "cpu_time_total", "self_cuda_memory_usage": "self_cpu_time_total",
    "device_memory_usage": "cpu_time_total", "self_device_memory_usage": "self_cpu_time_total",
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


def format_table(rows, sort_by: str | None, row_limit: int | None, max_name_width: int,
                 max_shapes_width: int, header: str | None = None) -> str:
    note = None
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
    widths = [max(name_width, 4)] + [_NUMBER_WIDTH] * 6
    titles = ["Name", "Self CPU %", "Self CPU", "CPU total %", "CPU total", "CPU time avg",
              "# of Calls"]
    cells = [[r.key, percent(r.self_cpu_time_total), format_time(r.self_cpu_time_total),
              percent(r.cpu_time_total), format_time(r.cpu_time_total), format_time(r.cpu_time),
              str(r.count)] for r in rows]
    if with_shapes:
        shapes = [str(r.input_shapes) for r in rows]
        widths.append(min(max(len(s) for s in shapes) + 4, max_shapes_width))
        titles.append("Input Shapes")
        for row, s in zip(cells, shapes):
            row.append(s)

    rule = "  ".join("-" * w for w in widths)
    lines = []
    if header is not None:
        lines += ["=" * len(rule), header]
    lines += [rule, "  ".join(_fit(t, w) for t, w in zip(titles, widths)), rule]
    lines += ["  ".join(_fit(c, w) for c, w in zip(row, widths)) for row in cells]
    lines += [rule, f"Self CPU time total: {format_time(total_self)}"]
    if note is not None:
        lines.append(f"({note})")
    return "\n".join(lines) + "\n"
