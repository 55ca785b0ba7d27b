"""Time a Python statement the way torch.utils.benchmark's Timer does
(timeit and blocked_autorange, giving a Measurement with per-run times and their median), and
tabulate Measurements as its Compare does."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import textwrap
import timeit as _timeit
import warnings
from typing import Callable

import kiln
from kiln.utils.benchmark.callgrind import CallgrindStats, CopyIfCallgrind, collect_callgrind


_MIN_CONFIDENCE_INTERVAL = 25e-9       # a timer's resolution: no figure is finer than 25 ns
# A spread (IQR / median) above these earns a Measurement a warning, as torch's do.
_IQR_WARN_THRESHOLD, _IQR_GROSS_WARN_THRESHOLD = 0.1, 0.25


def _unit_of(seconds: float) -> tuple[str, float]:
    """The unit a time prints in: its power of 1000 (ns up to s)."""
    power = math.floor(math.log10(seconds) / 3) if seconds > 0 else -3
    return {-3: ("ns", 1e-9), -2: ("us", 1e-6), -1: ("ms", 1e-3)}.get(power, ("s", 1.0))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What was timed, and the labels it is shown under."""

    stmt: str
    setup: str
    global_setup: str = ""
    label: str | None = None
    sub_label: str | None = None
    description: str | None = None
    env: str | None = None
    num_threads: int = 1


class Measurement:
    """The result of a Timer: `raw_times[i]` is the time of `number_per_run` runs, `times[i]`
    the time of one run. `env` names the environment it was measured in (for A/B tables).
    As in torch, a TaskSpec may stand in the place of `stmt` and the labels."""

    def __init__(self, number_per_run: int, raw_times: list[float],
                 stmt: str | TaskSpec = "", label: str | None = None,
                 sub_label: str | None = None, description: str | None = None,
                 num_threads: int = 1, setup: str = "pass", env: str | None = None, *,
                 task_spec: TaskSpec | None = None, metadata: dict | None = None):
        if isinstance(stmt, TaskSpec) or task_spec is not None:
            if isinstance(stmt, TaskSpec) and isinstance(label, dict):
                metadata = label                        # torch's fourth argument
            spec = stmt if isinstance(stmt, TaskSpec) else task_spec
            stmt, label, sub_label = spec.stmt, spec.label, spec.sub_label
            description, num_threads, setup, env = (spec.description, spec.num_threads,
                                                    spec.setup, spec.env)
        self.number_per_run, self.raw_times = number_per_run, list(raw_times)
        self.stmt, self.label, self.sub_label = stmt, label, sub_label
        self.description, self.num_threads = description, num_threads
        self.setup, self.env, self.metadata = setup, env, metadata

    @property
    def task_spec(self) -> TaskSpec:
        return TaskSpec(self.stmt, self.setup, "", self.label, self.sub_label,
                        self.description, self.env, self.num_threads)

    @staticmethod
    def merge(measurements) -> list[Measurement]:
        """Measurements of one task pooled into one of single-run times (metadata dropped)."""
        groups: dict[TaskSpec, list[Measurement]] = {}
        for m in measurements:
            groups.setdefault(m.task_spec, []).append(m)
        return [Measurement(1, [t for m in group for t in m.times], task_spec=spec)
                for spec, group in groups.items()]

    @property
    def times(self) -> list[float]:
        return [t / self.number_per_run for t in self.raw_times]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def iqr(self) -> float:
        if len(self.times) < 2:
            return 0.0
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def significant_figures(self) -> int:
        """A rough count of the trustworthy digits of the median (1 to 4), from the spread of
        the middle half of the times, as torch's Measurement estimates it (for Compare)."""
        ordered = sorted(self.times)
        middle = ordered[len(ordered) // 4:math.ceil(3 * len(ordered) / 4)]
        spread = 1.645 * statistics.pstdev(middle) / math.sqrt(len(middle))
        interval = max(spread, _MIN_CONFIDENCE_INTERVAL)
        return min(max(math.floor(math.log10(self.median / interval)), 1), 4)

    def meets_confidence(self, threshold: float = _IQR_WARN_THRESHOLD) -> bool:
        return self.iqr / self.median < threshold

    @property
    def warnings(self) -> list[str]:
        if self.meets_confidence(_IQR_WARN_THRESHOLD):
            return []
        why = ("This suggests significant environmental influence."
               if not self.meets_confidence(_IQR_GROSS_WARN_THRESHOLD)
               else "This could indicate system fluctuation.")
        return [f"  WARNING: Interquartile range is {self.iqr / self.median * 100:.1f}% of the "
                f"median measurement.\n           {why}"]

    @property
    def has_warnings(self) -> bool:
        return bool(self.warnings)

    @property
    def title(self) -> str:
        if self.label is not None:
            return self.label + (f": {self.sub_label}" if self.sub_label else "")
        if "\n" not in self.stmt:
            return self.stmt + (f": {self.sub_label}" if self.sub_label else "")
        return (f"stmt:{f' ({self.sub_label})' if self.sub_label else ''}\n"
                f"{textwrap.indent(self.stmt, '  ')}")

    def summarize(self) -> str:
        """Title, description and setup, as torch prints them above a measurement (a section
        of several lines is followed by a blank line)."""
        setup = self.setup.strip("\n")
        if setup in ("", "pass"):
            setup = ""
        elif "\n" in setup:
            setup = f"setup:\n{textwrap.indent(setup, '  ')}"
        else:
            setup = f"setup: {setup}"
        sections = [s for s in (self.title, self.description or "", setup) if s]
        return "\n".join(s + "\n" if "\n" in s else s for s in sections)

    def __repr__(self) -> str:
        lines = [f"<kiln.utils.benchmark.Measurement object at {hex(id(self))}>",
                 self.summarize()]
        threads = f"{self.num_threads} thread" + ("s" if self.num_threads != 1 else "")
        n = len(self.raw_times)
        unit, scale = _unit_of(self.median)
        lines.append(f"  {'Median: ' if n > 1 else ''}{self.median / scale:.2f} {unit}")
        if n >= 4:
            q = statistics.quantiles(self.times, n=4, method="inclusive")
            lines.append(f"  IQR:    {self.iqr / scale:.2f} {unit} ({q[0] / scale:.2f} to "
                         f"{q[2] / scale:.2f})")
        lines.append(f"  {n} measurement{'s' if n > 1 else ''}, {self.number_per_run} runs "
                     f"{'per measurement,' if n > 1 else ','} {threads}")
        lines += self.warnings
        return "\n".join(lines)


@contextlib.contextmanager
def _threads(n: int):
    """kiln on `n` threads while timing (then as before), as torch's Timer sets torch's."""
    previous = kiln.get_num_threads()
    if previous == n:
        yield
        return
    try:
        kiln.set_num_threads(n)
    except RuntimeError as e:                   # no threadpoolctl: the count is only recorded
        warnings.warn(f"Timer: could not run on num_threads={n} ({e})", stacklevel=4)
        yield
        return
    try:
        yield
    finally:
        kiln.set_num_threads(previous)


class Timer:
    """Times `stmt` (a string of Python, run with `globals`) after `setup`, as
    torch.utils.benchmark.Timer, with kiln on `num_threads` threads meanwhile."""

    def __init__(self, stmt: str = "pass", setup: str = "pass", global_setup: str = "",
                 timer: Callable[[], float] = _timeit.default_timer, globals: dict | None = None,
                 label: str | None = None, sub_label: str | None = None,
                 description: str | None = None, env: str | None = None,
                 num_threads: int = 1, language: str = "python"):
        if str(language).lower().split(".")[-1] not in ("python", "0"):
            raise ValueError(f"Timer: kiln times Python statements only, got language "
                             f"{language!r}")
        setup = global_setup + "\n" + setup if global_setup else setup
        self._stmt, self._info = stmt, dict(label=label, sub_label=sub_label,
                                            description=description, num_threads=num_threads,
                                            setup=setup, env=env)
        self._setup, self._globals = setup, dict(globals or {})
        # torch's Timer gives the statement `torch`; kiln's gives kiln by that name
        self._timer = _timeit.Timer(stmt, setup, timer, globals={
            "torch": kiln, **CopyIfCallgrind.unwrap_all(self._globals)})

    def _measure(self, number: int, repeats: int) -> Measurement:
        raw = [self._timer.timeit(number) for _ in range(repeats)]
        return Measurement(number, raw, self._stmt, **self._info)

    def timeit(self, number: int = 1000000) -> Measurement:
        """One measurement of `number` runs (after one warm-up run)."""
        with _threads(self._info["num_threads"]):
            self._timer.timeit(1)
            return self._measure(number, 1)

    def _block_size(self, min_run_time: float) -> int:
        """Runs per block: a power of ten whose block takes >= 10 ms (or a third of the
        budget)."""
        number = 1
        while True:
            took = self._timer.timeit(number)
            if took >= min(0.01, min_run_time / 3) or number >= 10 ** 9:
                return number
            number *= 10

    def _blocks(self, number: int, callback, done: Callable[[list, float], bool]) -> Measurement:
        raw, spent = [], 0.0
        while not done(raw, spent):
            took = self._timer.timeit(number)
            raw.append(took)
            spent += took
            if callback is not None:
                callback(number, took)
        return Measurement(number, raw, self._stmt, **self._info)

    def blocked_autorange(self, callback=None, min_run_time: float = 0.2) -> Measurement:
        """Blocks of runs, each block long enough to time reliably (>= 10 ms or the whole
        budget), repeated until `min_run_time` seconds have been spent (at least 3 blocks)."""
        with _threads(self._info["num_threads"]):
            return self._blocks(self._block_size(min_run_time), callback,
                                lambda raw, spent: spent >= min_run_time and len(raw) >= 3)

    def adaptive_autorange(self, threshold: float = 0.1, *, min_run_time: float = 0.01,
                           max_run_time: float = 10.0, callback=None) -> Measurement:
        """Blocks of runs (as `blocked_autorange`) until the times are steady: the spread of
        their middle half (IQR) below `threshold` times the median, with at least 3 blocks and
        `min_run_time` seconds spent; or until `max_run_time` seconds are spent."""
        def done(raw: list, spent: float) -> bool:
            if spent >= max_run_time:
                return True
            if spent < min_run_time or len(raw) < 3:
                return False
            m = Measurement(1, raw)
            return m.iqr / m.median < threshold
        with _threads(self._info["num_threads"]):
            return self._blocks(self._block_size(0.05), callback, done)

    def collect_callgrind(self, number: int = 100, *, repeats: int | None = None,
                          collect_baseline: bool = True, retain_out_file: bool = False
                          ) -> CallgrindStats | tuple[CallgrindStats, ...]:
        """Instruction counts of `number` runs under valgrind's callgrind, in a child Python
        that imports kiln (as both `kiln` and `torch`), runs `setup` and gets copies of the
        globals (pickled: build unpicklable ones in `setup`). `repeats` gives that many
        CallgrindStats; the baseline is as many runs of `pass`."""
        self._timer.timeit(1)               # the statement fails here, not under valgrind
        summary = Measurement(1, [0.0], self._stmt, **self._info).summarize()
        return collect_callgrind(self._stmt, self._setup, self._globals, summary, number,
                                 repeats, collect_baseline, retain_out_file,
                                 self._info["num_threads"])


_UNIT_NAMES = {"s": "seconds (s)", "ms": "milliseconds (ms)", "us": "microseconds (us)",
               "ns": "nanoseconds (ns)"}


def _trim_sigfig(x: float, figures: int) -> float:
    """`x` rounded to `figures` significant figures (3.14159, 2 -> 3.1)."""
    scale = 10.0 ** (math.ceil(math.log10(abs(x))) - figures)
    return round(x / scale) * scale


class Compare:
    """A table of Measurements, as torch.utils.benchmark.Compare prints it: one block per
    label, rows by num_threads, env then sub_label (the env shown when a label has several),
    columns by description, each cell a median in
    the unit of the fastest one."""

    def __init__(self, results: list[Measurement]) -> None:
        self._results: list[Measurement] = []
        self._trim = self._highlight = False
        self._colorize: str | None = None     # None, "columnwise" or "rowwise"
        self.extend_results(results)

    def extend_results(self, results: list[Measurement]) -> None:
        for r in results:
            if not isinstance(r, Measurement):
                raise ValueError(f"Expected an instance of `Measurement`, got {type(r)} "
                                 "instead.")
        self._results.extend(results)

    def trim_significant_figures(self) -> None:
        self._trim = True

    def colorize(self, rowwise: bool = False) -> None:
        self._colorize = "rowwise" if rowwise else "columnwise"

    def highlight_warnings(self) -> None:
        """Marks each noisy cell (IQR over 10% of the median) with " (! XX%)"."""
        self._highlight = True

    def print(self) -> None:
        print(str(self))

    def __str__(self) -> str:
        results = Measurement.merge(self._results)     # replicates of a task pooled
        return "\n".join(self._render([r for r in results if r.label == label], label)
                         for label in dict.fromkeys(r.label for r in results))

    def _render(self, results: list[Measurement], label) -> str:
        """One label's table: a first column of row names, left-aligned, then one centered
        column per description, joined by "  |  "; a rule per thread count."""
        unit, scale = _unit_of(min(r.median for r in results))
        columns = list(dict.fromkeys(r.description for r in results))
        # a row is (threads, (env, name)): envs sort within a thread count, names keep order
        rows = sorted(dict.fromkeys((r.num_threads, (r.env, r.sub_label or r.stmt))
                                    for r in results),
                      key=lambda row: (row[0], row[1][0] or ""))
        by_key = {(r.num_threads, (r.env, r.sub_label or r.stmt), r.description): r
                  for r in results}
        text = {}
        for c in columns:
            members = [(key, m) for key, m in by_key.items() if key[2] == c]
            leading = [math.ceil(math.log10(m.median / scale)) for _, m in members]
            decimals = min(max(m.significant_figures - d, 0) for d, (_, m) in
                           zip(leading, members)) if self._trim else 1
            length = max(leading) + decimals + (1 if decimals else 0)
            flag = self._highlight and any(m.has_warnings for _, m in members)
            for key, m in members:
                value = m.median / scale
                if self._trim:
                    value = _trim_sigfig(value, m.significant_figures)
                spread = f" (! {m.iqr / m.median * 100:.0f}%)" if m.has_warnings else ""
                text[key] = f"{value:>{length}.{decimals}f}" + (f"{spread:>7}" if flag else "")
            blank = " " * (length + (7 if flag else 0))     # a cell with no measurement
            for n, name in rows:
                text.setdefault((n, name, c), blank)
        row_names = self._row_names(rows)
        widths = [max(len(name) for name in row_names.values())]
        widths += [max([len(str(c))] + [len(text[n, name, c]) for n, name in rows])
                   for c in columns]
        header = "  |  ".join(str(h).center(w) for h, w in zip([""] + columns, widths))
        lines = ["[" + f" {label or ''} ".center(len(header) - 2, "-") + "]", header]
        threads = None
        for n, name in rows:
            if n != threads:
                threads = n
                lines.append(f"{n} threads: ".ljust(len(header), "-"))
            cells = [self._paint(text[n, name, c].center(w), by_key.get((n, name, c)),
                                 self._best(by_key, n, name, c))
                     for c, w in zip(columns, widths[1:])]
            lines.append("  |  ".join([row_names[n, name].ljust(widths[0])] + cells))
        lines += ["", f"Times are in {_UNIT_NAMES[unit]}."]
        if self._highlight and any(r.has_warnings for r in results):
            lines.append("(! XX%) Measurement has high variance, where XX is the IQR / median "
                         "* 100.")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _row_names(rows: list) -> dict:
        """Each row's name, indented; where the rows have several envs, the first row of each
        env within a thread count starts with "(env)"."""
        envs = {env for _, (env, _) in rows}
        env_width = max(len(str(env)) for env in envs) if len(envs) > 1 else 0
        names, prior = {}, None
        for n, (env, name) in rows:
            shown = f"({env})" if len(envs) > 1 and (n, env) != prior else ""
            names[n, (env, name)] = f"  {shown:<{env_width + 4}}{name}"
            prior = (n, env)
        return names

    def _best(self, by_key: dict, n, name, column) -> float | None:
        """The median a cell is colored against: its row's best, or its column's best among
        the rows of its thread count."""
        if self._colorize == "rowwise":
            return min(m.median for (t, s, _), m in by_key.items() if (t, s) == (n, name))
        if self._colorize == "columnwise":
            return min(m.median for (t, _, c), m in by_key.items() if t == n and c == column)
        return None

    def _paint(self, text: str, m: Measurement | None, best: float | None) -> str:
        """Green for the best of its row (or column) or within 1% of it, blue within 10%,
        dim red from twice and bold red from five times as slow, as torch colors."""
        if m is None or best is None:
            return text
        value = m.median
        if value <= best * 1.01 or value <= best + 100e-9:
            return f"\033[92m\033[1m{text}\033[0m\033[0m"
        if value <= best * 1.1:
            return f"\033[34m\033[1m{text}\033[0m\033[0m"
        if value >= best * 5:
            return f"\033[31m\033[1m{text}\033[0m\033[0m"
        if value >= best * 2:
            return f"\033[2m\033[91m{text}\033[0m\033[0m"
        return text
