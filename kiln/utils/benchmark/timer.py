"""Time a Python statement the way torch.utils.benchmark's Timer does
(timeit and blocked_autorange, giving a Measurement with per-run times and their median), and
tabulate Measurements as its Compare does."""

from __future__ import annotations

import math
import statistics
import textwrap
import timeit as _timeit
from typing import Callable

import kiln
from kiln.utils.benchmark.callgrind import CallgrindStats, CopyIfCallgrind, collect_callgrind


_MIN_CONFIDENCE_INTERVAL = 25e-9       # a timer's resolution: no figure is finer than 25 ns


def _format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.2f} {unit}"
    return f"{seconds / 1e-9:.2f} ns"


class Measurement:
    """The result of a Timer: `raw_times[i]` is the time of `number_per_run` runs, `times[i]`
    the time of one run."""

    def __init__(self, number_per_run: int, raw_times: list[float], stmt: str = "",
                 label: str | None = None, sub_label: str | None = None,
                 description: str | None = None, num_threads: int = 1):
        self.number_per_run, self.raw_times = number_per_run, list(raw_times)
        self.stmt, self.label, self.sub_label = stmt, label, sub_label
        self.description, self.num_threads = description, num_threads

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

    @property
    def title(self) -> str:
        if self.label is not None:
            return self.label + (f": {self.sub_label}" if self.sub_label else "")
        return self.stmt

    def __repr__(self) -> str:
        lines = [f"<kiln.utils.benchmark.Measurement object at {hex(id(self))}>", self.title]
        if self.description:
            lines.append(self.description)
        threads = f"{self.num_threads} thread" + ("s" if self.num_threads != 1 else "")
        n = len(self.raw_times)
        if n == 1:
            lines += [f"  {_format_time(self.median)}",
                      f"  1 measurement, {self.number_per_run} runs , {threads}"]
        else:
            lines += [f"  Median: {_format_time(self.median)}", f"  IQR:    "
                      f"{_format_time(self.iqr)}",
                      f"  {n} measurements, {self.number_per_run} runs per measurement, "
                      f"{threads}"]
        return "\n".join(lines)


class Timer:
    """Times `stmt` (a string of Python, run with `globals`) after `setup`, as
    torch.utils.benchmark.Timer; `num_threads` is recorded, not applied."""

    def __init__(self, stmt: str = "pass", setup: str = "pass", global_setup: str = "",
                 timer: Callable[[], float] = _timeit.default_timer, globals: dict | None = None,
                 label: str | None = None, sub_label: str | None = None,
                 description: str | None = None, env: str | None = None,
                 num_threads: int = 1, language: str = "python"):
        if str(language).lower().split(".")[-1] not in ("python", "0"):
            raise ValueError(f"Timer: kiln times Python statements only, got language "
                             f"{language!r}")
        self._stmt, self._info = stmt, dict(label=label, sub_label=sub_label,
                                            description=description, num_threads=num_threads)
        setup = global_setup + "\n" + setup if global_setup else setup
        self._setup, self._globals = setup, dict(globals or {})
        # torch's Timer gives the statement `torch`; kiln's gives kiln by that name
        self._timer = _timeit.Timer(stmt, setup, timer, globals={
            "torch": kiln, **CopyIfCallgrind.unwrap_all(self._globals)})

    def _measure(self, number: int, repeats: int) -> Measurement:
        raw = [self._timer.timeit(number) for _ in range(repeats)]
        return Measurement(number, raw, self._stmt, **self._info)

    def timeit(self, number: int = 1000000) -> Measurement:
        """One measurement of `number` runs (after one warm-up run)."""
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
        return self._blocks(self._block_size(0.05), callback, done)

    def collect_callgrind(self, number: int = 100, *, repeats: int | None = None,
                          collect_baseline: bool = True, retain_out_file: bool = False
                          ) -> CallgrindStats | tuple[CallgrindStats, ...]:
        """Instruction counts of `number` runs under valgrind's callgrind, in a child Python
        that imports kiln (as both `kiln` and `torch`), runs `setup` and gets copies of the
        globals (pickled: build unpicklable ones in `setup`). `repeats` gives that many
        CallgrindStats; the baseline is as many runs of `pass`."""
        self._timer.timeit(1)               # the statement fails here, not under valgrind
        title = Measurement(1, [0.0], self._stmt, **self._info).title
        summary = title + (f"\nsetup:\n{textwrap.indent(self._setup, '  ')}"
                           if self._setup.strip() not in ("", "pass") else "")
        return collect_callgrind(self._stmt, self._setup, self._globals, summary, number,
                                 repeats, collect_baseline, retain_out_file,
                                 self._info["num_threads"])


_UNITS = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))
_UNIT_NAMES = {"s": "seconds (s)", "ms": "milliseconds (ms)", "us": "microseconds (us)",
               "ns": "nanoseconds (ns)"}


def _trim_sigfig(x: float, figures: int) -> float:
    """`x` rounded to `figures` significant figures (3.14159, 2 -> 3.1)."""
    scale = 10.0 ** (math.ceil(math.log10(abs(x))) - figures)
    return round(x / scale) * scale


class Compare:
    """A table of Measurements, as torch.utils.benchmark.Compare prints it: one block per
    label, rows by num_threads then sub_label, columns by description, each cell a median in
    the unit of the fastest one."""

    def __init__(self, results: list[Measurement]) -> None:
        self._results: list[Measurement] = []
        self._trim = False
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
        """Accepted: kiln's Measurements carry no noise warnings to highlight."""

    def print(self) -> None:
        print(str(self))

    def __str__(self) -> str:
        blocks = []
        for label in dict.fromkeys(r.label for r in self._results):
            blocks.append(self._render([r for r in self._results if r.label == label], label))
        return "\n\n".join(blocks)

    def _render(self, results: list[Measurement], label) -> str:
        scale_name, scale = next(((name, s) for name, s in _UNITS
                                  if min(r.median for r in results) >= s), _UNITS[-1])
        columns = list(dict.fromkeys(r.description or "" for r in results))
        rows = sorted(dict.fromkeys((r.num_threads, r.sub_label or r.stmt) for r in results),
                      key=lambda row: row[0])
        cell = {(r.num_threads, r.sub_label or r.stmt, r.description or ""): r.median / scale
                for r in results}
        by_key = {(r.num_threads, r.sub_label or r.stmt, r.description or ""): r
                  for r in results}
        text = {}
        for c in columns:
            members = [(key, m) for key, m in by_key.items() if key[2] == c]
            leading = [math.ceil(math.log10(m.median / scale)) for _, m in members]
            decimals = min(max(m.significant_figures - d, 0) for d, (_, m) in
                           zip(leading, members)) if self._trim else 1
            length = max(leading) + decimals + (1 if decimals else 0)
            for key, m in members:
                value = cell[key]
                if self._trim:
                    value = _trim_sigfig(value, m.significant_figures)
                text[key] = f"{value:>{length}.{decimals}f}"
        width = max([len(c) for c in columns] + [len(t) for t in text.values()] + [1])
        row_width = max(len(str(name)) for _, name in rows) + 9
        header = " " * row_width + "|" + "|".join(f"  {c:^{width}}  " for c in columns)
        rule = f"[{'-' * max(1, (len(header) - len(str(label or '')) - 4) // 2)} {label or ''} "
        rule += "-" * max(1, len(header) - len(rule) - 1) + "]"
        lines = [rule, header]
        threads = None
        for n, name in rows:
            if n != threads:
                threads = n
                lines.append(f"{n} threads: " + "-" * max(1, len(header) - 12))
            values = [cell.get((n, name, c)) for c in columns]
            shown = [self._paint(f"{text.get((n, name, c), ''):^{width}}", v,
                                 self._peers(cell, n, name, c))
                     for c, v in zip(columns, values)]
            lines.append(f"      {str(name):<{row_width - 6}}|" +
                         "|".join(f"  {s}  " for s in shown))
        lines.append("")
        lines.append(f"Times are in {_UNIT_NAMES[scale_name]}.")
        return "\n".join(lines)

    def _peers(self, cell: dict, n, name, column) -> list[float]:
        """The values a cell is colored against: its row's or its column's (same threads)."""
        if self._colorize == "rowwise":
            return [v for (t, s, _), v in cell.items() if (t, s) == (n, name)]
        return [v for (t, _, c), v in cell.items() if t == n and c == column]

    def _paint(self, text: str, value: float | None, peers: list[float]) -> str:
        """Green for the best of its row (or column) or within 1% of it, blue within 10%,
        dim red from twice and bold red from five times as slow, as torch colors."""
        if self._colorize is None or value is None:
            return text
        best = min(peers)
        if value <= best * 1.01 or value <= best + 100e-9:
            return f"\033[92m\033[1m{text}\033[0m\033[0m"
        if value <= best * 1.1:
            return f"\033[34m\033[1m{text}\033[0m\033[0m"
        if value >= best * 5:
            return f"\033[31m\033[1m{text}\033[0m\033[0m"
        if value >= best * 2:
            return f"\033[2m\033[91m{text}\033[0m\033[0m"
        return text
