"""Python effects a replay would skip, noticed while a call is traced.

A replay runs the captured tensor program and nothing else, so anything else the traced call
did in Python would happen once, at trace time, and never again. Two mechanisms find them:

- `EffectWatch` swaps in watched versions of `print`, `input`, `open`, `sys.stdout`,
  `sys.stderr` and `logging.Logger.handle` while any thread traces, and reports a call made
  from the user's code (not from kiln) to the watch of the thread that made it, with its line;
- `random_states` / `random_draws` compare the state of Python's and NumPy's global random
  generators, and of every generator the guards reached, before and after the call (a draw
  changes the state; NumPy's generators are Cython, invisible to any Python-level hook).

`sys.setprofile` would see more (writes through a file object opened before the call), but on
CPython 3.11 a profile function crashes the interpreter now and then; kiln does not use it.
Mutations of reachable Python state are found by the guards (`kiln.compiler.guards.changed`).
"""

from __future__ import annotations

import builtins
import logging
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
    """sys.stdout / sys.stderr while some thread traces: a write is reported to that thread's
    watch, then done."""

    def __init__(self, stream, name: str):
        self._stream, self._name = stream, name

    def write(self, text):
        if _saw(f"writing to sys.{self._name}"):
            return len(text)
        return self._stream.write(text)

    def writelines(self, lines):
        if _saw(f"writing to sys.{self._name}"):
            return None
        return self._stream.writelines(lines)

    def __getattr__(self, name):
        return getattr(self._stream, name)


_BUILTINS = {"print": "print() writes to stdout", "input": "input() reads from stdin",
             "open": "open() opens a file"}
# output a swallowing watch skips (reading input or opening a file returns what code uses)
_LOGGING = "logging a message (its handlers run)"
_SWALLOWED = {_BUILTINS["print"], "writing to sys.stdout", "writing to sys.stderr"}
_ACTIVE: dict = {}            # thread id -> its EffectWatch, while that thread traces
_LOCK = threading.Lock()
_SAVED: dict = {}             # what the watched versions replaced, while any thread traces


def _saw(what: str) -> bool:
    """Report an output or input call to this thread's watch; True when it is to be skipped
    (a watch that swallows output, and the call is the user's print or write)."""
    watch = _ACTIVE.get(threading.get_ident())
    if watch is None:
        return False
    return watch.saw(what, sys._getframe(2)) and what in _SWALLOWED


def _watched(name: str, original):
    def watched(*args, **kwargs):
        if _saw(_BUILTINS[name]):
            return None
        return original(*args, **kwargs)
    watched.__wrapped__ = original
    return watched


# Every _WatchedStream ever installed, by the stream it wraps, never freed. CPython 3.11's
# print() holds sys.stdout as a borrowed reference across the writes of one call: if another
# thread's _uninstall dropped the last reference to the wrapper between them, print wrote through
# freed memory (a segfault in CI, two threads tracing). One wrapper per stream, kept, is also
# reused by the next install.
_WRAPPERS: dict = {}


def _wrapper(stream, name: str) -> _WatchedStream:
    key = (id(stream), name)        # the wrapper keeps the stream alive, so its id stays its own
    if key not in _WRAPPERS:
        _WRAPPERS[key] = _WatchedStream(stream, name)
    return _WRAPPERS[key]


def _watched_handle(logger, record):
    """logging.Logger.handle while some thread traces: a message the user's code logs (one its
    logger passes on) reaches handlers a replay would not call (a stream handler keeps the
    sys.stderr of its making, unwatched)."""
    _saw(_LOGGING)
    return _SAVED["handle"](logger, record)


def _install() -> None:
    _SAVED.update({name: getattr(builtins, name) for name in _BUILTINS})
    _SAVED.update(stdout=sys.stdout, stderr=sys.stderr, handle=logging.Logger.handle)
    for name in _BUILTINS:
        setattr(builtins, name, _watched(name, _SAVED[name]))
    logging.Logger.handle = _watched_handle
    sys.stdout = _wrapper(sys.stdout, "stdout")
    sys.stderr = _wrapper(sys.stderr, "stderr")


def _uninstall() -> None:
    for name in _BUILTINS:
        if getattr(getattr(builtins, name), "__wrapped__", None) is _SAVED[name]:
            setattr(builtins, name, _SAVED[name])
    for name in ("stdout", "stderr"):       # unless the user's code replaced it meanwhile
        if isinstance(getattr(sys, name), _WatchedStream):
            setattr(sys, name, _SAVED[name])
    if logging.Logger.handle is _watched_handle:
        logging.Logger.handle = _SAVED["handle"]
    _SAVED.clear()


class EffectWatch:
    """While active (`with EffectWatch(report):`), calls `report(what, "file:line")` for the
    first output or input call (`print`, `input`, `open`, writes to sys.stdout/stderr) the
    user's code makes on this thread. The watched versions are installed once, while any
    thread traces, and report to the watch of the thread that calls them. With `swallow`,
    the user's output is also not written (a run whose output eager code will write again).
    """

    def __init__(self, report, swallow: bool = False):
        self.report = report
        self.swallow = swallow
        self.done = False

    def saw(self, what: str, frame) -> bool:
        """Report the user's call (the first one); whether to skip it."""
        where = user_frame(frame)
        if where is None:
            return False
        if not self.done:
            self.done = True
            self.report(what, f"{where.f_code.co_filename}:{where.f_lineno}")
        return self.swallow

    def __enter__(self) -> "EffectWatch":
        with _LOCK:
            if not _ACTIVE:
                _install()
            _ACTIVE[threading.get_ident()] = self
        return self

    def __exit__(self, *exc) -> bool:
        with _LOCK:
            _ACTIVE.pop(threading.get_ident(), None)
            if not _ACTIVE:
                _uninstall()
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
