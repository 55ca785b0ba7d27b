"""Python effects a replay would skip, noticed while a call is traced.

A replay runs the captured tensor program and nothing else, so anything else the traced call
did in Python (printing, writing a file, drawing a Python or NumPy random number, reading the
clock) would happen once, at trace time, and never again. `EffectWatch` watches the traced call
with `sys.setprofile` and reports each such call made from the user's code (calls made inside
kiln do not count: its own random numbers are graph inputs) with the line that made it.

Covered: `print`, `input`, `open`, `write`/`writelines`/`flush` on any file or stream (sys.stdout,
logging's handlers, files), every method of `random.Random` and the `random` module, NumPy's
`RandomState` / `Generator` / `np.random.*`, and `time.time`/`perf_counter`/`monotonic`/
`process_time`. Mutations of reachable Python state are found by the guards instead
(`kiln.compiler.guards.changed`).
"""

from __future__ import annotations

import builtins
import io
import os
import random
import sys
import sysconfig
import time

import numpy as np

_KILN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STDLIB_DIRS = tuple({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
_RANDOM_FILE = random.__file__
_CLOCKS = {time.time, time.perf_counter, time.monotonic, time.process_time, time.time_ns,
           time.perf_counter_ns, time.monotonic_ns}
_STREAM_METHODS = {"write", "writelines", "flush"}
_RANDOM_STATES = (random.Random, np.random.RandomState, np.random.Generator,
                  np.random.BitGenerator)


def c_effect(fn) -> str | None:
    """What calling the builtin `fn` does that a replay would skip, or None."""
    if fn is builtins.print:
        return "print() writes to stdout"
    if fn is builtins.input:
        return "input() reads from stdin"
    if fn is builtins.open or fn is io.open:
        return "open() opens a file"
    if fn in _CLOCKS:
        return f"time.{fn.__name__}() reads the clock"
    owner = getattr(fn, "__self__", None)
    if owner is None:
        return None
    if isinstance(owner, io.IOBase) and fn.__name__ in _STREAM_METHODS:
        return f"{fn.__name__}() on a file or stream"
    if isinstance(owner, _RANDOM_STATES):
        kind = "Python" if isinstance(owner, random.Random) else "NumPy"
        return f"a {kind} random draw ({fn.__name__}())"
    return None


def _file_kind(filename: str) -> str:
    if filename.startswith(_KILN_DIR):
        return "kiln"
    if filename.startswith(_STDLIB_DIRS) or filename.startswith("<frozen"):
        return "stdlib"
    return "user"


def user_frame(frame):
    """The frame of the user's code that is responsible for a call made in `frame`: the nearest
    frame outside the standard library; None when that frame is kiln's own."""
    while frame is not None:
        kind = _file_kind(frame.f_code.co_filename)
        if kind == "user":
            return frame
        if kind == "kiln":
            return None
        frame = frame.f_back
    return None


class EffectWatch:
    """While active (`with EffectWatch(report):`), calls `report(what, "file:line")` for each
    Python effect the user's code makes. It stops watching after the first report."""

    def __init__(self, report):
        self.report = report
        self.done = False

    def __enter__(self) -> "EffectWatch":
        self.previous = sys.getprofile()
        sys.setprofile(self._event)
        return self

    def __exit__(self, *exc) -> bool:
        sys.setprofile(self.previous)
        return False

    def _event(self, frame, event, arg) -> None:
        if self.done:
            return
        if event == "c_call":
            what = c_effect(arg)
        elif event == "call" and frame.f_code.co_filename == _RANDOM_FILE:
            what = f"a Python random draw (random.{frame.f_code.co_name}())"
            frame = frame.f_back
        else:
            return
        if what is None:
            return
        where = user_frame(frame)
        if where is None:
            return
        self.done = True
        sys.setprofile(self.previous)
        self.report(what, f"{where.f_code.co_filename}:{where.f_lineno}")
