"""Python effects a replay would skip, noticed while a call is traced.

A replay runs the captured tensor program and nothing else, so anything else the traced call
did in Python would happen once, at trace time, and never again. Two mechanisms find them:

- `EffectWatch` swaps in watched versions of `print`, `input`, `open`, `sys.stdout` and
  `sys.stderr` for the duration of the traced call, and reports a call made from the user's
  code (not from kiln) on the tracing thread, with its line;
- `random_states` / `random_draws` compare the state of Python's and NumPy's global random
  generators, and of every generator the guards reached, before and after the call (a draw
  changes the state; NumPy's generators are Cython, invisible to any Python-level hook).

`sys.setprofile` would see more (writes through a file object opened before the call), but on
CPython 3.11 a profile function crashes the interpreter now and then; kiln does not use it.
Mutations of reachable Python state are found by the guards (`kiln.compiler.guards.changed`).
"""

from __future__ import annotations

import builtins
import os
import random
import sys
import sysconfig
import threading

import numpy as np

_KILN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STDLIB_DIRS = tuple({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})


def _file_kind(filename: str) -> str:
    if filename.startswith(_KILN_DIR):
        return "kiln"
    if filename.startswith(_STDLIB_DIRS) or filename.startswith("<frozen"):
        return "stdlib"
    return "user"


def user_frame(frame):
    """The frame of the user's code responsible for a call made in `frame`: the nearest frame
    outside the standard library; None when that frame is kiln's own."""
    while frame is not None:
        kind = _file_kind(frame.f_code.co_filename)
        if kind == "user":
            return frame
        if kind == "kiln":
            return None
        frame = frame.f_back
    return None


class _WatchedStream:
    """sys.stdout / sys.stderr while a call is traced: writes are reported, then done."""

    def __init__(self, stream, watch: "EffectWatch", name: str):
        self._stream, self._watch, self._name = stream, watch, name

    def write(self, text):
        self._watch.saw(f"writing to sys.{self._name}")
        return self._stream.write(text)

    def writelines(self, lines):
        self._watch.saw(f"writing to sys.{self._name}")
        return self._stream.writelines(lines)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class EffectWatch:
    """While active (`with EffectWatch(report):`), calls `report(what, "file:line")` for the
    first output or input call (`print`, `input`, `open`, writes to sys.stdout/stderr) the
    user's code makes on this thread."""

    _BUILTINS = {"print": "print() writes to stdout", "input": "input() reads from stdin",
                 "open": "open() opens a file"}

    def __init__(self, report):
        self.report = report
        self.done = False
        self.thread = threading.get_ident()

    def saw(self, what: str) -> None:
        if self.done or threading.get_ident() != self.thread:
            return
        where = user_frame(sys._getframe(2))
        if where is None:
            return
        self.done = True
        self.report(what, f"{where.f_code.co_filename}:{where.f_lineno}")

    def _watched(self, name: str):
        original = getattr(builtins, name)
        what = self._BUILTINS[name]

        def watched(*args, **kwargs):
            self.saw(what)
            return original(*args, **kwargs)
        watched.__wrapped__ = original
        return watched

    def __enter__(self) -> "EffectWatch":
        self.saved = {name: getattr(builtins, name) for name in self._BUILTINS}
        self.streams = (sys.stdout, sys.stderr)
        for name in self._BUILTINS:
            setattr(builtins, name, self._watched(name))
        sys.stdout = _WatchedStream(sys.stdout, self, "stdout")
        sys.stderr = _WatchedStream(sys.stderr, self, "stderr")
        return self

    def __exit__(self, *exc) -> bool:
        for name, original in self.saved.items():
            setattr(builtins, name, original)
        if isinstance(sys.stdout, _WatchedStream) and sys.stdout._watch is self:
            sys.stdout = self.streams[0]
        if isinstance(sys.stderr, _WatchedStream) and sys.stderr._watch is self:
            sys.stderr = self.streams[1]
        return False


# ----------------------------------------------------------------------------- random draws

def _state(gen):
    if isinstance(gen, np.random.Generator):
        return repr(gen.bit_generator.state)
    if isinstance(gen, np.random.RandomState):
        state = gen.get_state()
        return (state[0], state[1].tobytes(), state[2], state[3], state[4])
    return gen.getstate()               # random.Random


def random_states(objects) -> list:
    """(source, generator, state) for Python's and NumPy's global generators and for every
    generator among `objects` ((source, object) pairs, e.g. what the guards reached)."""
    found = [("random (Python's global generator)", random._inst),
             ("numpy.random (NumPy's global RandomState)", np.random.mtrand._rand)]
    for source, obj in objects:
        if isinstance(obj, (np.random.Generator, np.random.RandomState, random.Random)):
            found.append((source, obj))
    return [(source, gen, _state(gen)) for source, gen in found]


def random_draws(states: list) -> list[str]:
    """The sources among `random_states(...)` whose state has changed since."""
    return [source for source, gen, state in states if _state(gen) != state]
