"""`kiln.utils.benchmark`: time a Python statement the way torch.utils.benchmark's Timer does
(timeit and blocked_autorange, giving a Measurement with per-run times and their median)."""

from __future__ import annotations

import statistics
import timeit as _timeit
from typing import Callable


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
        self._timer = _timeit.Timer(stmt, setup, timer, globals=dict(globals or {}))

    def _measure(self, number: int, repeats: int) -> Measurement:
        raw = [self._timer.timeit(number) for _ in range(repeats)]
        return Measurement(number, raw, self._stmt, **self._info)

    def timeit(self, number: int = 1000000) -> Measurement:
        """One measurement of `number` runs (after one warm-up run)."""
        self._timer.timeit(1)
        return self._measure(number, 1)

    def blocked_autorange(self, callback=None, min_run_time: float = 0.2) -> Measurement:
        """Blocks of runs, each block long enough to time reliably (>= 10 ms or the whole
        budget), repeated until `min_run_time` seconds have been spent (at least 3 blocks)."""
        number = 1
        while True:
            took = self._timer.timeit(number)
            if took >= min(0.01, min_run_time / 3) or number >= 10 ** 9:
                break
            number *= 10
        raw, spent = [], 0.0
        while spent < min_run_time or len(raw) < 3:
            took = self._timer.timeit(number)
            raw.append(took)
            spent += took
            if callback is not None:
                callback(number, took)
        return Measurement(number, raw, self._stmt, **self._info)
