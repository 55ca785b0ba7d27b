"""Guards: what a traced call could read from Python, checked before every replay.

A replay is valid only while the Python world the traced call saw is unchanged. kiln cannot
know which attribute reads a call made (it does not rewrite bytecode as TorchDynamo does), so
it guards what the call *could* reach, by name: the globals and closure cells the function's
code names, `self`, and from those, through modules, optimizers, containers and plain objects,
every attribute and item. Each reached place becomes one `Guard`:

- a tensor, module, function or other object is guarded by identity (a rebound global, closure
  cell, list item, module attribute or parameter is a different object);
- a tensor's own attributes (`p.no_weight_decay`, `p.momentum_buffer`: its `__dict__`) as a
  plain object's, all of them, and one guard on how many each tensor walked has (one set where
  the trace found none);
- a Python scalar by type and value (`2` != `2.0` != `True`, `0.0` != `-0.0`, NaN == NaN);
- a container by its length as well as its items; a list of more than a few scalars, tensors
  and tuples of them by one guard on all its items (a snapshot compared by identity first, by
  value when an item was replaced), a set by its members; a tuple of such by its identity
  alone (nothing in it can be rebound); a dict of two keys or more by its keys in order;
- standard-library state no attribute holds (`_Walk.library_state`): how far an iterator or
  generator has gone (`progress`; one whose progress cannot be read, a library's own iterator,
  is unguarded), a `ContextVar`'s value, `os.environ`, a weak dictionary's items, a
  bytearray's or `array.array`'s contents, an `lru_cache`'d function's fill and what it reads;
  a deque as a list, a `threading.local` as a plain object;
- a NumPy array by its shape, dtype and bits (a copy compared on each replay: a value the call
  read into Python, `float(A[0])`, `kiln.tensor(A)`, is baked into the trace), up to
  `_ARRAY_BYTES` an array and `_ARRAY_BYTES_TOTAL` in all; an array of objects by the objects it
  holds, as a list. The caps come from measured cost (a loaded 2-core machine): comparing the
  bits of 4K, 64K, 256K (1 MiB), 1M and 16M float32 elements with a stored copy took 5-15 us,
  12-35 us, 40-100 us, 0.15-0.45 ms and 7-20 ms, where a small replay takes 15-25 us, so 1 MiB
  costs a few replays at most and 4 MiB in all under half a millisecond;
  `np.array_equal(..., equal_nan=True)`, the comparison before, took 3 to 28 times as long.
  Nothing cheaper is exact (NumPy keeps no version counter; a checksum reads every byte too), so
  a larger array the call's code reaches (a dataset) is listed as unguarded: such a call runs
  eagerly, with a warning naming the array, its shape and dtype;
- the user modules a call finds by name as it runs (`import cfg` or `from cfg import lr` in a
  function, `importlib.import_module(name)`, `__import__(name)`, `sys.modules[name]`), which no
  global need hold: when code the call can run does that (`_imports_of`; or names one of
  `_IMPORTERS` under another name, `from importlib import import_module as load`), the modules
  it names, or for a computed name every user module holding a name that code loads, by
  identity in `sys.modules` and in the attributes that code loads (`_Walk.imported`); code
  that also reads by computed name then runs eagerly with a warning. A user module's
  attributes are guarded in the names any code the call can run loads (a helper may return the
  module), and a user's submodule held by a module is walked as a module.

The walk goes `_OBJECT_DEPTH` levels into plain objects and containers (counted from the
nearest function, class, module or optimizer) and adds at most `_GUARD_BUDGET` guards. A place
past either limit is not guarded, and never silently: the walk records an "unguarded" guard
naming it (it always holds): `compiler` then runs that call eagerly with a warning, and
`explain` and `kiln dump` list the place with the guards.

A plain object of the user's (not a module or an optimizer) is guarded only in the attributes
whose names the code the call can run loads (`code_reads`), as TorchDynamo guards only what the
traced code accessed: a trainer's `history` that grows outside the compiled step is not read by
it. Where that code reads attributes by computed name (`getattr`, `vars`, `copy`, ...) or a
class hides its attributes (`__getattr__`, other descriptors), the object is walked whole. A
slot is such an attribute (its member descriptor is read by its name), set or not; so is a
dataclass field (the generated `__eq__` and `__repr__` are code that names every field). A
`types.SimpleNamespace` or `argparse.Namespace` compares and prints itself in C or library
code reading every attribute: it is walked whole where the code compares or formats anything
(`_compares`).

Reading the same places again after the traced call tells which of them the call itself
changed: a Python effect a replay would skip (`compiler` turns it into a graph break). That
walk reads every attribute: it runs once per trace.
"""

from __future__ import annotations

import abc
import argparse
import array
import builtins
import collections
import contextvars
import dataclasses
import dis
import functools
import importlib
import importlib.util
import logging
import math
import operator
import os
import queue
import re
import string
import sys
import threading
import types
import typing
import weakref
from dataclasses import dataclass

import numpy as np

from kiln.tracer.autograd import grad_hooks_of
from kiln.tracer.tensor import Tensor

MISSING = object()          # a global, cell or attribute that does not exist (any more)

# NumPy's numbers are values too (DINO sets each step's lr from a NumPy schedule, `lr[it]`)
NUMPY_FLOATS = (np.float64, np.float32, np.float16)
_NUMPY_INTS = (np.int64, np.int32, np.int16, np.int8, np.uint8)
SCALARS = (bool, int, float, complex, str, bytes, type(None), type(Ellipsis)) + NUMPY_FLOATS + \
    _NUMPY_INTS + (np.bool_,)
_NUMBERS = (int, float) + NUMPY_FLOATS + _NUMPY_INTS    # what a number read on every call holds
_OBJECT_DEPTH = 32          # attribute and item levels into plain objects and containers
_GUARD_BUDGET = 100_000     # guards per walk: past it, places are listed as unguarded
_ITEM_GUARDS = 8            # a longer list of scalars, tensors and tuples: one guard on all
_ARRAY_BYTES = 1 << 20      # a NumPy array's contents compared on each replay up to this size
_ARRAY_BYTES_TOTAL = 4 << 20    # and up to this much in all, per walk
_NOT_WALKED = ("kiln", "numpy", "triton", "networkx", "torch", "builtins")


def scalar_key(value) -> tuple:
    """A Python scalar's guard value: type-tagged, NaN equal to NaN, the sign of zero kept."""
    t = type(value)
    if t is float or t in NUMPY_FLOATS:
        return (t, "nan") if value != value else (t, float(value), math.copysign(1.0, value))
    if t is complex:
        return (complex, scalar_key(value.real), scalar_key(value.imag))
    return (t, value)


def _same(kind: str, expected, value) -> bool:
    if kind == "id":
        return value is expected
    if kind == "value":
        return type(value) in SCALARS and scalar_key(value) == expected
    if kind in ("len", "eq"):
        return value == expected
    if kind == "keys":              # a dict's keys, in order (`next(iter(d))`, `move_to_end`)
        return tuple(value) == expected
    if kind == "type":
        return type(value) is expected
    if kind == "number":            # (type, is zero): a number read on every call
        return type(value) is expected[0] and (value == 0) == expected[1]
    if kind == "array":
        return (isinstance(value, np.ndarray) and value.shape == expected.shape and
                value.dtype == expected.dtype and np.array_equal(_bits(value), _bits(expected)))
    if kind == "items":
        return _same_items(value, expected)
    if kind == "members":           # (most are empty: a module's sets of names)
        return len(value) == len(expected) and (not expected or _members(value) == expected)
    if kind == "unguarded":         # a place past a limit: listed, never checked
        return True
    raise AssertionError(kind)


def _bits(a: np.ndarray) -> np.ndarray:
    """An array's bytes as unsigned integers, one per element where the item size allows (a
    view, whatever the strides): equal bits are equal contents, -0.0 apart from 0.0 and a NaN
    equal to itself, and comparing them skips the NaN tests a float comparison makes."""
    if a.itemsize in (1, 2, 4, 8):
        return a.view(f"u{a.itemsize}")
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _same_items(items, expected: tuple) -> bool:
    """Whether a list of scalars, tensors and tuples of them holds what `expected` (a copy)
    held: the same objects (the fast check, in C), or equal scalars (`scalar_key`) where one
    was replaced by an equal one."""
    if len(items) != len(expected):
        return False
    if all(map(operator.is_, items, expected)):
        return True
    return all(v is e or type(v) in SCALARS and type(e) in SCALARS and
               scalar_key(v) == scalar_key(e) for v, e in zip(items, expected))


def _members(found: set) -> frozenset:
    """A set's members as a guard compares them: scalars by `scalar_key` (`{1}` != `{1.0}`)."""
    return frozenset(scalar_key(v) if type(v) in SCALARS else v for v in found)


@dataclass(frozen=True)
class Guard:
    """One place the traced call could read, and what it held.

    `read()` returns the place's current content (MISSING when gone); `kind` is how it is
    compared with `expected`: "id" (identity), "value" (a scalar's `scalar_key`), "len" (a
    container's length), "keys" (a dict's keys in order, `expected` a tuple), "eq" (equality
    with a value or copy), "array" (a small NumPy array's contents), "items" (a list's or
    tuple's scalars and tensors, `expected` a copy), "members" (a set's), "unguarded" (a place
    past the walk's limits, `expected` which limit: always holds, listed so that it is seen).
    """

    source: str
    read: object
    kind: str
    expected: object
    lazy: bool = False      # an optimizer's state, which its first step fills in (see compiler)
    place: tuple | None = None      # (id(container), key) for an item of a dict or list

    def holds(self) -> bool:
        try:
            value = self.read()
        except Exception:          # a property that raises now: not what the trace saw
            return False
        return _same(self.kind, self.expected, value)

    def describe(self) -> str:
        if self.kind == "id" and self.expected is MISSING:
            return f"{self.source} is not set"
        if self.kind == "id":
            return f"{self.source} is the same {type(self.expected).__name__} object"
        if self.kind == "value":
            return f"{self.source} == {self.expected[1]!r} ({self.expected[0].__name__})"
        if self.kind in ("len", "eq"):
            return f"{self.source} == {self.expected}"
        if self.kind == "keys":
            return f"{self.source} has the same {len(self.expected)} keys in the same order"
        if self.kind == "type":
            return f"{self.source} is a {self.expected.__name__} (read on every call)"
        if self.kind == "number":
            return (f"{self.source} is a {self.expected[0].__name__}, "
                    f"{'0' if self.expected[1] else 'not 0'} (read on every call)")
        if self.kind == "items":
            return f"{self.source} holds the same {len(self.expected)} items"
        if self.kind == "members":
            return f"{self.source} holds the same {len(self.expected)} members"
        if self.kind == "unguarded":
            return (f"NOT GUARDED: {self.source} and what it holds ({self.expected}): a change "
                    "there is not seen by a replay")
        return f"{self.source} holds the same values"


# ----------------------------------------------------------------------------- readers
# A reader of a place a call can assign (a global, a closure cell, an attribute, a dict or list
# item) also carries `read.write(value)` and `read.at`, the place's identity: a call that sets a
# flag there (`model.train()`) is replayed by setting it again (see `compiler`).

def _writable(read, at: tuple, write):
    read.at, read.write = at, write
    return read


def _global(glb: dict, name: str):
    return _writable(lambda: glb.get(name, MISSING), (id(glb), name),
                     functools.partial(glb.__setitem__, name))


def _cell(cell):
    def read():
        try:
            return cell.cell_contents
        except ValueError:
            return MISSING

    def write(value):
        cell.cell_contents = value
    return _writable(read, (id(cell), None), write)


def _attr(obj, name: str):
    d = obj.__dict__
    return _writable(lambda: d.get(name, MISSING), (id(d), name),
                     functools.partial(d.__setitem__, name))


def _slot(obj, name: str):
    return _writable(lambda: getattr(obj, name, MISSING), (id(obj), name),
                     functools.partial(setattr, obj, name))


def _class_attr(cls: type, name: str):
    """A class attribute as the call sees it: a static or class method as its function."""
    def read():
        value = vars(cls).get(name, MISSING)
        return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
    return _writable(read, (id(cls), name), functools.partial(setattr, cls, name))


def _type_of(obj):
    return lambda: type(obj)


@functools.lru_cache(maxsize=1024)
def _slot_names(cls: type) -> tuple:
    """The `__slots__` of a user class and its user bases: attributes outside `__dict__`."""
    names = []
    for klass in cls.__mro__:
        if klass in _PLAIN_BASES or _library_module(klass.__module__):
            continue
        slots = vars(klass).get("__slots__", ())
        names += [slots] if isinstance(slots, str) else \
            [n for n in slots if n not in ("__dict__", "__weakref__")]
    return tuple(names)


def _item(container, key):
    def read():
        try:
            return container[key]
        except (KeyError, IndexError):
            return MISSING
    if isinstance(container, (dict, list)):
        read.owner = container          # (whose class may tell its reads: `hooks.note_item_read`)
        return _writable(read, (id(container), key), functools.partial(container.__setitem__,
                                                                         key))
    return read


def _length(container):
    read = lambda: len(container)      # noqa: E731
    read.container = container          # what `undo_writes` puts back
    return read


def _keys(container):
    """The reader of a "keys" guard: the dict (its own place is guarded by identity)."""
    read = lambda: container           # noqa: E731
    read.container = container          # what `undo_writes` puts back
    return read


def _itself(container):
    """The reader of an "items" or "members" guard: the container (its own place is guarded
    by identity)."""
    read = lambda: container           # noqa: E731
    read.container = container
    return read


def constant(value):
    return lambda: value


_PROGRESS_DEPTH = 8     # iterators inside iterators (`zip(count(), it)`) followed this deep


def _cache_fill(cached) -> tuple:
    """A `functools.lru_cache` function's misses and size: both stay while calls only hit."""
    info = cached.cache_info()
    return info.misses, info.currsize


def _logger_levels(logger) -> tuple:
    """What decides whether a logger passes a message on: its own level, those it inherits,
    `logging.disable`, `logger.disabled`."""
    return logger.getEffectiveLevel(), logger.manager.disable, logger.disabled


def _reducible_iterator(obj) -> bool:
    """An iterator of the interpreter's or itertools' (`iter(list)`, `count()`, `zip`, `map`),
    whose `__reduce__` says how far it has gone."""
    return hasattr(type(obj), "__next__") and type(obj).__module__ in ("builtins", "itertools")


def progress(obj, depth: int = 0):
    """How far an iterator or generator has gone, as a value to compare between two moments
    (`next(it)` changes it; nothing about it is a Python attribute the walk could guard): a
    C iterator's `__reduce__` state, a generator's suspended instruction and locals. Objects
    inside count by identity, lists by identity and length, nested iterators by their own
    progress. Raises TypeError for an iterator whose progress cannot be read."""
    if type(obj) in SCALARS:
        return scalar_key(obj)
    if depth > _PROGRESS_DEPTH:
        return id(obj)
    if isinstance(obj, (tuple, list)):
        inner = tuple(progress(v, depth + 1) for v in obj) if type(obj) is tuple else len(obj)
        return (id(obj) if type(obj) is list else None, inner)
    if isinstance(obj, types.GeneratorType):
        frame = obj.gi_frame
        if frame is None:
            return "finished"
        return (frame.f_lasti, progress(obj.gi_yieldfrom, depth + 1),
                tuple(progress(v, depth + 1) for v in frame.f_locals.values()))
    if _reducible_iterator(obj):
        return tuple(progress(v, depth + 1) for v in obj.__reduce__()[1:])
    if hasattr(type(obj), "__next__") and not isinstance(obj, Tensor):
        raise TypeError(f"the progress of a {type(obj).__name__} iterator cannot be read")
    return id(obj)


def _flat_items(a: np.ndarray) -> list:
    return list(a.flat)


def _flat_item(a: np.ndarray, i: int):
    try:
        return a.flat[i]
    except IndexError:
        return MISSING


def _attribute_counts(dicts: tuple) -> list:
    return list(map(len, dicts))


# ----------------------------------------------------------------------------- roots

_GLOBAL_OPS = {"LOAD_GLOBAL", "LOAD_NAME"}
_ATTRIBUTE_OPS = {"LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR", "STORE_ATTR", "DELETE_ATTR",
                  "IMPORT_FROM"}


@functools.lru_cache(maxsize=512)
def _names_of(code) -> tuple[frozenset, frozenset]:
    globals_, attrs = set(), set()
    last: list = []         # the instructions before this one
    for ins in dis.get_instructions(code):
        if ins.opname in _GLOBAL_OPS:
            globals_.add(ins.argval)
        elif ins.opname in _ATTRIBUTE_OPS and not (
                ins.argval == code.co_name and _after_super(ins, last[-3:])):
            attrs.add(ins.argval)
        elif ins.opname == "MATCH_CLASS":   # `case Point(x=0)` reads attributes named in data
            attrs.add("__match_args__")
        last.append(ins)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):      # lambdas, comprehensions, inner functions
            g, a = _names_of(const)
            globals_ |= g
            attrs |= a
        elif isinstance(const, str) and "{" in const:
            attrs |= _format_attributes(const)
    return frozenset(globals_), frozenset(attrs)


def _after_super(ins, before: list) -> bool:
    """Whether `ins` loads its name from `super()` (no arguments). Inside the method of that
    name (`super().__init__()` in `__init__`) the name is no new read: the method it reaches
    is its namesake further along the MRO of `type(self)`, which runs with it (see `_Reach`);
    counted as a read, every class's `__init__` would seem to run wherever a Module subclass
    is reached, and every attribute set there to be read."""
    if ins.opname == "LOAD_SUPER_ATTR":     # (Python 3.12 on)
        return True
    return [(i.opname, i.arg if i.opname != "LOAD_GLOBAL" else i.argval) for i in before] == \
        [("LOAD_GLOBAL", "super"), ("PRECALL", 0), ("CALL", 0)]


def _format_attributes(text: str) -> set:
    """The attribute names a format string reads (`"{0.history}".format(tr)`)."""
    found = set()
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:                  # not a format string
        return found
    for _, name, spec, _ in parsed:
        found.update(re.sub(r"\[[^]]*\]", "", name or "").split(".")[1:])   # `{0[k].x}`: x
        if spec and "{" in spec:        # `{x:>{w.width}}`
            found |= _format_attributes(spec)
    return found


# names whose use finds a module by a name computed as the call runs
_IMPORTING = frozenset({"import_module", "__import__"})
_LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FAST", "LOAD_DEREF"}
_IMPORTERS = (importlib.import_module, builtins.__import__, sys.modules)    # by any name


@functools.lru_cache(maxsize=512)
def _imports_of(code) -> tuple[frozenset, bool]:
    """The modules a code object (and every code nested in it) imports as it runs: the
    `import` statements' ((name, level, fromlist), ...), and whether it finds modules by a
    computed name (`importlib.import_module`, `__import__`, `sys.modules`)."""
    static, dynamic = set(), False
    last = None
    before: list = []
    for ins in dis.get_instructions(code):
        if ins.opname == "IMPORT_NAME":     # (after LOAD_CONST level, LOAD_CONST fromlist)
            level, fromlist = (i.argval if i.opname == "LOAD_CONST" else 0
                               for i in before[-2:]) if len(before) >= 2 else (0, None)
            static.add((ins.argval, level if type(level) is int else 0,
                        tuple(fromlist) if isinstance(fromlist, tuple) else ()))
        elif ins.opname in _GLOBAL_OPS | _ATTRIBUTE_OPS and ins.argval in _IMPORTING or \
                ins.opname in _ATTRIBUTE_OPS and ins.argval == "modules" and \
                last is not None and last.opname in _LOADS and last.argval == "sys" or \
                ins.opname in _GLOBAL_OPS and ins.argval == "modules":
            dynamic = True
        last = ins
        before.append(ins)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner, found = _imports_of(const)
            static |= inner
            dynamic = dynamic or found
    return frozenset(static), dynamic


def _module_names(imports: frozenset, glb: dict) -> set:
    """The modules `import` statements of a function whose globals are `glb` bind or read: each
    module named, its packages, and the submodules `from pkg import sub` names."""
    found = set()
    for name, level, fromlist in imports:
        if level:
            package = glb.get("__package__") or glb.get("__name__", "").rpartition(".")[0]
            try:
                name = importlib.util.resolve_name("." * level + name, package)
            except (ImportError, ValueError):
                continue
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        found.update(f"{name}.{item}" for item in fromlist if item != "*")
    return found


def global_names(code) -> frozenset:
    """The global names a code object (and every code nested in it) loads."""
    return _names_of(code)[0]


def code_names(code) -> frozenset:
    """The attribute names a code object (and every code nested in it) loads: what it can read
    from a Python module it names (`config.ALPHA`); with `ANY_NAME` where it reads by computed
    name (`getattr(config, "lr")`, `vars(config)`)."""
    globals_, attrs = _names_of(code)
    if globals_ & _DYNAMIC_GLOBALS or attrs & _DYNAMIC_ATTRIBUTES:
        return attrs | {ANY_NAME}
    return attrs


ANY_NAME = "*"          # in `code_names`: every attribute of a user's Python module
# builtins that read every global of the function's module (`globals()["N"]`, `eval("N")`)
_EVERY_GLOBAL = frozenset({"globals", "eval", "exec"})


def roots(fn) -> list:
    """(source, reader, value) for each place `fn` can name: closure cells, the globals its code
    names, and `self` of a bound method or the module itself when `fn` is a Module."""
    found = []
    if getattr(fn, "__code__", None) is None and hasattr(fn, "forward"):    # a Module
        return [("self", constant(fn), fn)]
    if isinstance(fn, functools.partial):      # its function, and the arguments it binds
        return [("partial", constant(fn), fn)]
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        found.append(("self", constant(fn.__self__), fn.__self__))
        fn = fn.__func__
    code = getattr(fn, "__code__", None)
    if code is None:
        return found
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        read = _cell(cell)
        found.append((name, read, read()))
    glb = getattr(fn, "__globals__", {})
    names = global_names(code)
    if names & _EVERY_GLOBAL - glb.keys():
        names |= {name for name in glb if not name.startswith("__")}
    for name in sorted(names):
        if name in glb:
            found.append((name, _global(glb, name), glb[name]))
    # default arguments: a call that omits one reads it (`def g(x, k=K)`, `g.__defaults__ =`)
    for name in ("__defaults__", "__kwdefaults__"):
        if getattr(fn, name, None) is not None:
            found.append((name, _function_attr(fn, name), getattr(fn, name)))
    return found


def _function_attr(fn, name: str):
    return lambda: getattr(fn, name)


def _user_function(obj) -> bool:
    """A Python function whose own globals and closures are worth guarding: not kiln's, NumPy's
    or the standard library's (those do not change between calls)."""
    if not isinstance(obj, types.FunctionType):
        return False
    module = (obj.__module__ or "").split(".")[0]
    return module not in _NOT_WALKED and module not in sys.stdlib_module_names


_DATA_HOLDERS = (types.SimpleNamespace, argparse.Namespace)
# the standard library's classes whose attributes are the user's data, walked as a plain
# object's (a ChainMap's `maps`, a Queue's deque)
_STATE_HOLDERS = (threading.local, collections.ChainMap, collections.UserDict,
                  collections.UserList, queue.Queue)
_DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))


def _data_holder(cls: type) -> bool:
    return issubclass(cls, _DATA_HOLDERS) or dataclasses.is_dataclass(cls)


@functools.lru_cache(maxsize=1024)
def _library_module(module_name: str | None) -> bool:
    """Whether a module is kiln's, the standard library's or an installed package's (or what
    a compiled extension's class names as its `__module__` where that is no str: Cython's
    shared metatype holds a descriptor there)."""
    if module_name is not None and not isinstance(module_name, str):
        return True
    name = (module_name or "").split(".")[0]
    if name in _NOT_WALKED or name in sys.stdlib_module_names:
        return True
    path = getattr(sys.modules.get(module_name or ""), "__file__", None) or ""
    return "site-packages" in path or "dist-packages" in path


def _is_module_base(klass: type) -> bool:
    return (klass.__module__, klass.__qualname__) == ("kiln.nn.module", "Module")


# what kiln's Module calls on a subclass by name, beside its own methods' names
_MODULE_BASE_CALLS = frozenset({"forward", "extra_repr"})


def _global_module_hooks() -> bool:
    """Whether a hook for every module is registered (`register_module_forward_hook` and its
    kin): its code, kiln's to the reads, may read any attribute of a user's module."""
    module = sys.modules.get("kiln.nn.module")
    return module is not None and any(
        getattr(module, name, None) for name in (
            "_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_pre_hooks",
            "_global_backward_hooks"))


def _own_module(cls: type) -> bool:
    """Whether a Module's class is the user's own, on kiln's `Module` base alone: its instance
    attributes, other than Module's `_` registries and `training`, are set and read only by
    the user's code (a kiln layer base, `nn.Linear`, reads its own public ones)."""
    return all(klass in _PLAIN_BASES or not _library_module(klass.__module__) or
               _is_module_base(klass) for klass in cls.__mro__)


def _library_class(cls: type) -> bool:
    """Whether instances of `cls` are guarded by identity only: a class of kiln, of the standard
    library or of an installed package (its state is its own business: a progress bar's counter
    changes on every call), unless it only holds data (a namespace, a dataclass)."""
    return not _data_holder(cls) and _library_module(cls.__module__)


# ----------------------------------------------------------------------------- what code reads

# names whose use reads an object's attributes by a computed name, or all of them at once
_DYNAMIC_GLOBALS = frozenset({
    "getattr", "setattr", "hasattr", "delattr", "vars", "dir", "eval", "exec", "copy",
    "deepcopy", "pickle", "dataclasses", "asdict", "astuple", "replace", "inspect",
    "getmembers", "attrgetter", "methodcaller"})
_DYNAMIC_ATTRIBUTES = frozenset({
    "__dict__", "__getattribute__", "__getattr__", "__reduce__", "__reduce_ex__",
    "__getstate__", "getattr", "setattr", "hasattr", "vars", "deepcopy", "asdict", "astuple",
    "getmembers", "attrgetter", "methodcaller", "__match_args__"})
# a class defining one of these does not keep what it reads in its instances' __dict__ by name
# (`__slots__` is not one: a slot is read through its member descriptor, by its name)
_OPAQUE_DUNDERS = frozenset({"__getattr__", "__getattribute__", "__reduce__", "__reduce_ex__",
                             "__getstate__"})
# methods that run only when the class is called (it is reached as a value), not on an instance
_CONSTRUCTORS = frozenset({"__init__", "__new__", "__init_subclass__", "__class_getitem__",
                           "__set_name__"})
# what may run a namespace's own `__eq__`, `__repr__` or `__contains__`, C or library code that
# reads every attribute: comparisons (also `in` a list, `list.index`), formatting, `print`
_WHOLE_READING_OPS = frozenset({"COMPARE_OP", "CONTAINS_OP", "FORMAT_VALUE", "FORMAT_SIMPLE",
                                "FORMAT_WITH_SPEC", "CONVERT_VALUE"})
_WHOLE_READING_NAMES = frozenset({
    "repr", "str", "ascii", "format", "print", "eq", "ne", "contains", "index", "count",
    "remove", "__eq__", "__ne__", "__repr__", "__str__", "__format__", "__contains__",
    "_get_kwargs", "_get_args"})
# methods the interpreter calls by a plain name: `f(**obj)` and `dict(obj)` call `obj.keys()`
_IMPLICIT_METHODS = frozenset({"keys"})
_PLAIN_BASES = (object, abc.ABC, typing.Generic)
_REACH_LIMIT = 100_000      # objects `code_reads` looks at before it reads everything whole


@dataclass(frozen=True)
class Reads:
    """Which attributes of plain user objects a call can read: those named in `names`, except
    in the objects whose ids are in `whole`, read whole; all of every object when `everything`
    (no narrowing is sound). A `types.SimpleNamespace` or `argparse.Namespace` is read whole
    where `compares`."""

    names: frozenset
    whole: frozenset = frozenset()
    everything: bool = False
    compares: bool = False      # reached code may compare or format a namespace (read whole)
    imports: frozenset = frozenset()    # modules reached code imports by name as it runs
    dynamic_imports: bool = False       # reached code finds modules by a computed name

    def by_name(self, obj) -> bool:
        return not self.everything and id(obj) not in self.whole


def _class_code(cls: type) -> tuple[list, bool, bool]:
    """A user class's own attributes ([(name, value)], a property as its accessors, a static or
    class method as its function), whether its instances must be read whole (a library base,
    whose code reads what kiln cannot see; `__getattr__` and its kin; a descriptor other than a
    function, property, static or class method), and whether it has a library base (whose code
    may call any of its methods by name: True; on kiln's Module base alone, the names of the
    methods Module calls, which run as if named)."""
    found, opaque, library_base = [], False, False
    slots = set(_slot_names(cls))
    for klass in cls.__mro__:
        if klass in _PLAIN_BASES:
            continue
        if _is_module_base(klass):
            # kiln's Module calls, of the user's methods, only those named as its own
            # (`forward`, an overridden `train`): those run, the others when named
            if library_base is not True:        # (a kiln layer base calls any method)
                library_base = _MODULE_BASE_CALLS | (set(vars(klass)) - _CONSTRUCTORS)
            continue
        if _library_module(klass.__module__):
            opaque = library_base = True
            continue
        for name, value in vars(klass).items():
            if name in ("__dict__", "__weakref__") or \
                    name in slots and isinstance(value, types.MemberDescriptorType):
                continue        # (a slot's storage: read as `obj.name`, as an attribute is)
            opaque = opaque or name in _OPAQUE_DUNDERS
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                found += [(name, f) for f in (value.fget, value.fset, value.fdel) if f]
                continue
            if type(value).__name__ != "CompiledFunction" and \
                    not isinstance(value, types.FunctionType) and hasattr(type(value), "__get__"):
                opaque = True           # (its own class's __get__ is walked as its code)
            found.append((name, value))
    return found, opaque, library_base


class _Reach:
    """One pass of `code_reads`: from the roots, the code the call can run and the attribute
    names it loads, following only attributes of plain objects with names loaded so far."""

    def __init__(self, names: frozenset, compares: bool, complete: bool = False):
        self.names = set(names)
        self.compares = compares
        self.whole: set[int] = set()
        self.everything = False
        self.complete = complete    # go on past `everything`, reading every object whole
        self.imports: set[str] = set()      # see `Reads`
        self.dynamic_imports = False
        self.seen: set = set()
        self.seen_tensors: set = set()
        self.classes: dict = {}
        self.left = _REACH_LIMIT

    def run(self, roots: list) -> None:
        stack = [(obj, False) for obj in roots]
        while stack and (not self.everything or self.complete and self.left >= 0):
            obj, in_library = stack.pop()
            if type(obj) in SCALARS or isinstance(obj, np.ndarray):
                continue
            if isinstance(obj, Tensor):     # its own attributes: as a library object's state
                if id(obj) not in self.seen_tensors:
                    self.seen_tensors.add(id(obj))
                    stack += [(v, True) for v in vars(obj).values()]
                continue
            if (id(obj), in_library) in self.seen:
                continue
            self.seen.add((id(obj), in_library))
            self.left -= 1
            self.everything = self.everything or self.left < 0
            stack += self.parts(obj, in_library)

    def code(self, code) -> None:
        globals_, attrs = _names_of(code)
        self.names |= attrs
        if globals_ & _DYNAMIC_GLOBALS or attrs & _DYNAMIC_ATTRIBUTES:
            self.everything = True
        self.compares = self.compares or _compares(code)

    def klass(self, cls: type, called: bool) -> tuple[list, bool]:
        """The code of a user class that can run ([(function, False)]), and whether its
        instances are read whole; `called`: the class itself is reached (it may be called)."""
        if cls not in self.classes:
            self.classes[cls] = _class_code(cls)
        found, opaque, library_base = self.classes[cls]

        def runs(name: str) -> bool:
            if library_base is True or self.everything or name in self.names or \
                    name in _IMPLICIT_METHODS or \
                    library_base and name in library_base:
                return True
            return name[:2] == name[-2:] == "__" and (called or name not in _CONSTRUCTORS)
        return [(value, False) for name, value in found if runs(name)], opaque

    def parts(self, obj, in_library: bool) -> list:
        """What the call can reach from `obj`, each with whether it was reached through a
        library object's state (a plain object found there is read whole)."""
        if isinstance(obj, types.ModuleType):
            if _library_module(obj.__name__):
                return []
            if self.everything:
                return [(v, False) for v in list(obj.__dict__.values())]
            return [(obj.__dict__[n], False) for n in self.names if n in obj.__dict__]
        if isinstance(obj, type):
            return [] if _library_module(obj.__module__) else self.klass(obj, True)[0]
        if isinstance(obj, types.FunctionType):
            if not _user_function(obj):     # a library wrapper: the user function it holds
                return [(c.cell_contents, True) for c in obj.__closure__ or () if _filled(c)] + \
                    [(v, True) for v in vars(obj).values()]
            self.code(obj.__code__)
            glb = obj.__globals__
            static, dynamic = _imports_of(obj.__code__)
            if static:
                self.imports |= _module_names(static, glb)
            self.dynamic_imports = self.dynamic_imports or dynamic
            found = [glb[n] for n in global_names(obj.__code__) if n in glb]
            # (not a method's `__class__` cell, for `super()`: its class is not called there)
            found += [c.cell_contents for name, c in zip(obj.__code__.co_freevars,
                                                          obj.__closure__ or ())
                      if name != "__class__" and _filled(c)]
            found += [*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]
            # (`from importlib import import_module as load`, `import sys as s; s.modules`)
            self.dynamic_imports = self.dynamic_imports or any(
                any(v is f for f in _IMPORTERS) or
                v is sys and "modules" in _names_of(obj.__code__)[1] for v in found)
            return [(v, False) for v in found]
        if isinstance(obj, types.MethodType):
            return [(obj.__func__, in_library), (obj.__self__, in_library)]
        if isinstance(obj, types.BuiltinFunctionType):      # `history.append`
            owner = obj.__self__
            return [] if isinstance(owner, types.ModuleType) else [(owner, in_library)]
        if isinstance(obj, functools.partial):
            return [(v, in_library) for v in (obj.func, *obj.args, *obj.keywords.values())]
        if isinstance(obj, (operator.attrgetter, operator.methodcaller)):
            self.everything = True
            return []
        if isinstance(obj, types.GeneratorType):
            frame = obj.gi_frame
            if frame is None:
                return []
            if not _library_module(frame.f_globals.get("__name__")):
                self.everything = True      # a user generator's locals are read as it runs
            return [(v, True) for v in frame.f_locals.values()]
        if type(obj).__name__ == "CompiledFunction":
            return [(obj.__dict__["fn"], in_library)]
        cls = type(obj)
        code, opaque = ([], False) if _library_module(cls.__module__) else self.klass(cls, False)
        if isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
            return code + [(v, in_library) for v in obj]
        if isinstance(obj, dict):
            return code + [(v, in_library) for item in obj.items() for v in item]
        attrs = getattr(obj, "__dict__", None)
        slots = _slot_names(cls)
        if not isinstance(attrs, dict) and not slots:
            return code
        attrs = {**(attrs if isinstance(attrs, dict) else {}),
                 **{name: getattr(obj, name) for name in slots if hasattr(obj, name)}}
        if (hasattr(obj, "_modules") and hasattr(obj, "_parameters")) or \
                (hasattr(obj, "param_groups") and hasattr(obj, "state")):
            return code + [(v, in_library) for v in attrs.values()]
        if cls in _DATA_HOLDERS:        # a namespace: read by name unless compared or printed
            if self.compares or in_library or self.everything:
                self.whole.add(id(obj))
            if id(obj) in self.whole:
                return [(v, in_library) for v in attrs.values()]
            return [(v, False) for n, v in attrs.items() if n in self.names]
        if _library_module(cls.__module__):       # guarded by identity; what it holds may run
            return [(v, True) for v in attrs.values()]
        if opaque or in_library or self.everything:
            self.whole.add(id(obj))
        if id(obj) in self.whole:
            return code + [(v, False) for v in attrs.values()]
        return code + [(v, False) for n, v in attrs.items() if n in self.names]


def _frozen(value, depth: int = 0) -> bool:
    """Whether a value is a scalar, a tensor (guarded by identity alone) or a tuple of such:
    nothing in it can be rebound, so its identity fixes what a call can read there."""
    if type(value) in SCALARS or isinstance(value, Tensor):    # (an int subclass may hold
        return True                                             # attributes: walked)
    return type(value) is tuple and depth < 4 and all(_frozen(v, depth + 1) for v in value)


def _holds_something(obj) -> bool:
    """Whether a container or plain object cut off by the depth limit holds anything a call
    could read (an empty list or a library's object holds nothing the walk would guard)."""
    if isinstance(obj, (list, tuple, dict, set, frozenset)):
        return len(obj) > 0
    return isinstance(getattr(obj, "__dict__", None), dict) and bool(vars(obj)) and \
        not _library_class(type(obj)) or bool(_slot_names(type(obj)))


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def code_reads(fn, extra: list = ()) -> Reads:
    """Which attributes of plain user objects a call of `fn` can read: the names its code, the
    user functions it reaches, and the methods and properties of the user classes it reaches
    load (a method runs when its name is loaded; a dunder when an operator calls it), worked
    out again until they stop growing, as each new name may reach more code. `everything` where
    reached code reads attributes by computed name or cannot be looked through."""
    function = getattr(fn, "__func__", fn)
    if isinstance(function, types.FunctionType) and not _user_function(function):
        return Reads(frozenset(), everything=True)      # library code: its reads are unseen
    roots = [fn, *(value for _, _, value in extra)]
    names: frozenset = frozenset()
    compares = False
    while True:
        reach = _Reach(names, compares)
        reach.run(roots)
        if reach.everything:
            # (which modules the call imports: from all the code it can reach, read whole)
            reach = _Reach(frozenset(reach.names), True, complete=True)
            reach.run(roots)
            return Reads(frozenset(), everything=True, imports=frozenset(reach.imports),
                         dynamic_imports=reach.dynamic_imports)
        if reach.names == names and reach.compares == compares:
            return Reads(names, frozenset(reach.whole), compares=compares,
                         imports=frozenset(reach.imports),
                         dynamic_imports=reach.dynamic_imports)
        names, compares = frozenset(reach.names), reach.compares


@functools.lru_cache(maxsize=512)
def _compares(code) -> bool:
    """Whether a code object (or one nested in it) may run a namespace's whole-reading dunders
    (`_WHOLE_READING_OPS`, `_WHOLE_READING_NAMES`)."""
    globals_, attrs = _names_of(code)
    if (globals_ | attrs) & _WHOLE_READING_NAMES:
        return True
    for ins in dis.get_instructions(code):
        if ins.opname in _WHOLE_READING_OPS or ins.opname == "BINARY_OP" and "%" in ins.argrepr:
            return True
    return any(_compares(c) for c in code.co_consts if isinstance(c, types.CodeType))


# ----------------------------------------------------------------------------- the walk

class _Walk:
    """Collects the guards of everything reachable from a function's roots."""

    def __init__(self, attribute_counts: bool = False, reads: Reads | None = None,
                 flag_reads: set | None = None):
        self.guards: list[Guard] = []
        self.seen: set[int] = set()
        # also each plain object's number of attributes: one the call adds (`batch.seen = 1`
        # on an argument) is a Python effect, though no place guarded before held it
        self.attribute_counts = attribute_counts
        self.reads = reads          # None: every attribute of every plain object
        self.flag_reads = flag_reads    # None: every module's `training`; else ids of those read
        self.over_budget = False
        self.tensor_dicts: list[dict] = []      # the `__dict__`s of the tensors walked
        self.array_bytes = 0        # the bytes of NumPy arrays whose contents are guarded
        # the attribute names any code the call can run loads, read on a user's module (None:
        # those of the function naming it; see `inside`)
        self.module_names: set | None = None

    def unguarded(self, source: str, limit: str) -> None:
        """Say that `source` and what it holds are past a limit (see the module docstring)."""
        self.guards.append(Guard(source, constant(None), "unguarded", limit))

    def place(self, source: str, read, value, depth: int, names: set | None = None,
              lazy: bool = False, where: tuple | None = None) -> None:
        """Guard the place `source` (read by `read`, holding `value` now) and what is inside."""
        if len(self.guards) >= _GUARD_BUDGET:
            if not self.over_budget:        # said once: every place walked after it is past
                self.over_budget = True
                self.unguarded(source, f"past {_GUARD_BUDGET:,} guards, the most one compiled "
                               "function gets; so is every place found after it")
            return
        if type(value) in SCALARS:
            self.guards.append(Guard(source, read, "value", scalar_key(value), lazy, where))
            return
        if value is MISSING:
            self.guards.append(Guard(source, read, "id", MISSING, lazy))
            return
        self.guards.append(Guard(source, read, "id", value, lazy, where))
        if id(value) in self.seen:
            return
        self.seen.add(id(value))
        if isinstance(value, Tensor):
            self.tensor_attributes(source, value, depth, lazy)
            return
        self.inside(source, value, depth, names, lazy)

    def tensor_attributes(self, source: str, t: Tensor, depth: int, lazy: bool) -> None:
        """A tensor's own attributes (`p.no_weight_decay`, a hand-written optimizer's
        `p.momentum_buffer`), walked as a plain object's, whole (kiln's code reads a subclass's
        by name too, unseen by `code_reads`). `counts_guard` sees one added or deleted."""
        attrs = vars(t)
        self.tensor_dicts.append(attrs)
        if self.attribute_counts:
            self.guards.append(Guard(f"len(vars({source}))", _length(attrs), "len", len(attrs),
                                     lazy))
        if attrs and depth >= _OBJECT_DEPTH:
            self.too_deep(source)
            return
        for name, value in list(attrs.items()):
            self.place(f"{source}.{name}", _attr(t, name), value, depth + 1, lazy=lazy)

    def frozen_tensors(self, source: str, obj, depth: int, lazy: bool) -> None:
        """The tensors in a tuple or list guarded as a whole (`_frozen`): a tensor's identity
        does not fix its own attributes, which are walked still."""
        for i, item in enumerate(obj):
            if isinstance(item, Tensor):
                if id(item) not in self.seen:
                    self.seen.add(id(item))
                    self.tensor_attributes(f"{source}[{i}]", item, depth + 1, lazy)
            elif type(item) is tuple:
                self.frozen_tensors(f"{source}[{i}]", item, depth + 1, lazy)

    def counts_guard(self) -> None:
        """One guard on how many attributes of their own the tensors walked have: a replay
        after one is set (`p.no_weight_decay = True` where the trace found none) traces again.
        (One guard for all, counted in C: most tensors have none, and a model has many. It
        reads the dicts found, as `_attr` does: a tensor's `__dict__` replaced whole is not
        seen, as a plain object's is not.)"""
        if self.tensor_dicts:
            dicts = tuple(self.tensor_dicts)
            self.guards.append(Guard(f"how many attributes each of {len(dicts)} tensors has",
                                     functools.partial(_attribute_counts, dicts), "eq",
                                     _attribute_counts(dicts)))

    def inside(self, source: str, obj, depth: int, names: set | None, lazy: bool) -> None:
        if isinstance(obj, np.ndarray):
            self.array(source, obj, depth, lazy)
            return
        if isinstance(obj, types.ModuleType):
            # a Python module: only the attributes the code names (`config.ALPHA`, `np.pi`),
            # a user's module whole where the code reads by computed name. A user's module
            # also in the names any code the call can run loads (`module_names`: a helper may
            # return the module, `get_config().lr`), and a user's submodule in its attributes
            # (`pkg.sub.lr`) as a module of its own.
            user = not _library_module(obj.__name__)
            if user and self.module_names is not None:
                names = {*(names or ()), *self.module_names}
            wanted = names
            if names and ANY_NAME in names and user:
                names = obj.__dict__.keys()
            for name in sorted(names or ()):
                if name in obj.__dict__ and not name.startswith("__"):
                    value = obj.__dict__[name]
                    if isinstance(value, types.ModuleType) and \
                            _library_module(value.__name__) or \
                            isinstance(value, type) and _library_module(value.__module__):
                        continue
                    self.place(f"{source}.{name}", _attr(obj, name), value, 0, wanted)
            return
        if isinstance(obj, types.MethodType):      # `self.callback = other.method`
            if depth >= _OBJECT_DEPTH:    # (its object is one level, as if held itself)
                self.too_deep(source)
            else:
                self.place(f"{source}.__self__", constant(obj.__self__), obj.__self__, depth)
                self.place(f"{source}.__func__", constant(obj.__func__), obj.__func__, depth)
            return
        if isinstance(obj, functools.partial):       # what it calls, and with what
            if depth >= _OBJECT_DEPTH:
                self.too_deep(source)
                return
            for name in ("func", "args", "keywords"):
                part = getattr(obj, name)
                self.place(f"{source}.{name}", constant(part), part, depth)
            return
        if isinstance(obj, type):
            if not _library_module(obj.__module__):
                self.class_members(source, obj, 0,
                                   self.reads is not None and not self.reads.everything)
            return
        if isinstance(obj, types.BuiltinFunctionType) and \
                not isinstance(obj.__self__, (types.ModuleType, type(None))):
            # a C method bound to its object (`draw = rng.random`, `log = history.append`)
            self.place(f"{source}.__self__", constant(obj.__self__), obj.__self__, depth)
            return
        if isinstance(obj, types.BuiltinFunctionType):
            return
        if type(obj).__name__ == "CompiledFunction":
            # called inside the trace, it runs its function inline: what that reaches is read
            # (a compiled `trainer.step` whose `self.n += 1` replays left stale when not walked)
            fn = obj.__dict__["fn"]
            self.place(f"{source}.fn", constant(fn), fn, depth)
            return
        if isinstance(obj, types.FunctionType):
            if _user_function(obj):     # its globals are roots as the compiled function's are
                for name, read, value in roots(obj):
                    self.place(f"{source}.<{name}>", read, value, 0, code_names(obj.__code__))
            return
        is_module = hasattr(obj, "_modules") and hasattr(obj, "_parameters")
        if depth >= _OBJECT_DEPTH and not is_module:
            if _holds_something(obj):
                self.too_deep(source)
            return
        if self.library_state(source, obj, depth, lazy):
            return
        if isinstance(obj, (list, tuple, collections.deque, dict, set, frozenset)):
            self.contents(source, obj, depth, lazy)
            if _library_class(type(obj)) or not isinstance(getattr(obj, "__dict__", None), dict):
                return      # (a user's subclass: its own attributes too, `registry.count`)
        attrs = getattr(obj, "__dict__", None)
        slots = _slot_names(type(obj))
        if not isinstance(attrs, dict) and not slots:
            return
        optimizer = hasattr(obj, "param_groups") and hasattr(obj, "state")
        if not (is_module or optimizer or isinstance(obj, _STATE_HOLDERS)) and \
                _library_class(type(obj)):
            return      # kiln's, NumPy's or a library's object (a Generator, a progress bar)
        # a module tree or an optimizer's groups and state are walked to their leaves, however
        # deep the module or optimizer was found
        inner = 0 if is_module or optimizer else depth + 1
        narrow = self.reads is not None and self.reads.by_name(obj) and \
            not (is_module or optimizer or isinstance(obj, _STATE_HOLDERS)) and \
            not (isinstance(obj, _DATA_HOLDERS) and (
                self.reads.compares or type(obj) not in _DATA_HOLDERS))
        if not isinstance(attrs, dict):
            attrs = {}
        elif self.attribute_counts and not optimizer or \
                self.reads is not None and not (narrow or is_module or optimizer):
            # (walked whole, by a call reading by computed name, `getattr(s, "k", 1.0)`: one
            # set or deleted since is read too, though no place guarded held it)
            self.guards.append(Guard(f"len(vars({source}))", _length(attrs), "len", len(attrs),
                                     lazy))
        items = [(name, _attr(obj, name), value) for name, value in attrs.items()]
        items += [(name, _slot(obj, name), getattr(obj, name, MISSING)) for name in slots]
        if narrow:
            items = [item for item in items if item[0] in self.reads.names]
            self.unset(source, obj, attrs)
        elif is_module and self.reads is not None and self.reads.by_name(obj) and \
                _own_module(type(obj)) and not _global_module_hooks():
            # a user's Module subclass (no kiln layer in its bases, whose code the reads cannot
            # see): kiln's Module code reads only its `_` registries and `training`, so the
            # user's own attributes (a log, a step count) are read where the user's code names
            # them, as a plain object's are
            items = [item for item in items if item[0][:1] == "_" or item[0] == "training"
                     or item[0] in self.reads.names]
            self.unset(source, obj, attrs)
        if is_module and self.unread_flag(obj):
            items = [item for item in items if item[0] != "training"]
        if optimizer and self.unread_flag(obj, "state"):
            items = [item for item in items if item[0] != "state"]
        for name, read, value in items:
            self.place(f"{source}.{name}", read, value, inner,
                       lazy=lazy or (optimizer and name == "state"))
        cls = type(obj)
        if not _library_module(cls.__module__):
            self.guards.append(Guard(f"type({source})", _type_of(obj), "id", cls, lazy))
            self.class_members(f"type({source})", cls, 0, narrow)

    def contents(self, source: str, obj, depth: int, lazy: bool) -> None:
        """What a list, tuple, deque, dict or set holds."""
        if isinstance(obj, (list, tuple, collections.deque)):
            if type(obj) is tuple and _frozen(obj):
                self.frozen_tensors(source, obj, depth, lazy)
                return      # (its identity, guarded, fixes all it holds but tensors' attributes)
            if len(obj) > _ITEM_GUARDS and all(map(_frozen, obj)):
                # (a long list of numbers: one check in C per replay, not one per item)
                self.guards.append(Guard(f"{source}[:]", _itself(obj), "items", tuple(obj),
                                         lazy))
                self.frozen_tensors(source, obj, depth, lazy)
                return
            self.guards.append(Guard(f"len({source})", _length(obj), "len", len(obj), lazy))
            for i, item in enumerate(obj):
                self.place(f"{source}[{i}]", _item(obj, i), item, depth + 1, lazy=lazy)
            return
        if isinstance(obj, dict):
            if len(obj) > 1:    # (its order is read too: `next(iter(d))`, `for k in d`)
                self.guards.append(Guard(f"keys of {source}", _keys(obj), "keys", tuple(obj),
                                         lazy))
            else:
                self.guards.append(Guard(f"len({source})", _length(obj), "len", len(obj),
                                         lazy))
            for i, (key, item) in enumerate(list(obj.items())):
                label = key if isinstance(key, (str, int)) else f"<key {i}>"
                self.place(f"{source}[{label!r}]", _item(obj, key), item, depth + 1, lazy=lazy,
                           where=(id(obj), key))
            return
        if isinstance(obj, (set, frozenset)):
            # (`x in S` reads its members, which may change while its length stays)
            self.guards.append(Guard(f"members of {source}", _itself(obj), "members",
                                     _members(obj), lazy))

    def library_state(self, source: str, obj, depth: int, lazy: bool) -> bool:
        """Guard what a standard-library object holds outside any attribute the walk reads
        (an iterator's progress, a context variable's value, `os.environ`, a weak dictionary's,
        mapping proxy's or dict view's items, a weak reference's object, a logger's levels, a
        bytearray's or an array.array's contents, an lru_cache's fill); whether `obj` was one."""
        if isinstance(obj, types.GeneratorType) or _reducible_iterator(obj) or \
                hasattr(type(obj), "__next__") and _library_class(type(obj)):
            try:
                self.guards.append(Guard(f"how far {source} has gone",
                                         functools.partial(progress, obj), "eq",
                                         progress(obj), lazy))
            except Exception as e:      # (a library's own iterator: a DataLoader's)
                self.unguarded(source, f"an iterator whose progress kiln cannot read ({e})")
            return True
        if isinstance(obj, contextvars.ContextVar):
            read = functools.partial(obj.get, MISSING)
            self.place(f"{source}.get()", read, read(), depth + 1, lazy=lazy)
            return True
        if isinstance(obj, os._Environ):
            self.guards.append(Guard(source, constant(obj._data), "eq", dict(obj._data), lazy))
            return True
        if isinstance(obj, logging.Logger):     # `if log.isEnabledFor(DEBUG):`
            read = functools.partial(_logger_levels, obj)
            self.guards.append(Guard(f"levels of {source}", read, "eq", read(), lazy))
            return True
        if isinstance(obj, _DICT_VIEWS):        # `keys = d.keys()`: the dict it shows
            shown = obj.mapping                 # (a new proxy each time it is read)
            self.place(f"{source}.mapping", constant(shown), shown, depth + 1, lazy=lazy)
            return True
        if isinstance(obj, weakref.ref) and not isinstance(obj, weakref.WeakMethod):
            self.place(f"{source}()", obj, obj(), depth + 1, lazy=lazy)
            return True
        if isinstance(obj, (weakref.WeakValueDictionary, weakref.WeakKeyDictionary,
                            types.MappingProxyType)):
            items = list(obj.items())
            self.guards.append(Guard(f"len({source})", _length(obj), "len", len(items), lazy))
            for i, (key, item) in enumerate(items):
                label = key if isinstance(key, (str, int)) else f"<key {i}>"
                self.place(f"{source}[{label!r}]", _item(obj, key), item, depth + 1, lazy=lazy)
            return True
        if isinstance(obj, (bytearray, array.array)):
            self.guards.append(Guard(f"{source}[:]", constant(obj), "eq", obj[:], lazy))
            return True
        if isinstance(obj, functools._lru_cache_wrapper):
            # a miss (a new argument, a cleared cache) runs the function, a hit returns what
            # it computed once: either way from what the function reads (its globals; a
            # cleared cache refills with the same count). A miss in the traced call fills the
            # cache as the trace's lazy state, not an effect (the function's own are seen).
            read = functools.partial(_cache_fill, obj)
            self.guards.append(Guard(f"misses and size of {source}'s cache", read, "eq", read(),
                                     True))
            wrapped = obj.__wrapped__
            self.place(f"{source}.__wrapped__", constant(wrapped), wrapped, depth)
            return True
        return False

    def array(self, source: str, a: np.ndarray, depth: int, lazy: bool) -> None:
        """Guard what a NumPy array holds (its identity is guarded): a call may read it into
        Python (`float(A[0])`, `kiln.tensor(A)`) and the trace then holds those values. Its
        shape, dtype and bits are compared with a copy on each replay, up to `_ARRAY_BYTES` an
        array and `_ARRAY_BYTES_TOTAL` a walk; a larger array (a dataset) is listed as
        unguarded by a walk whose guards a replay checks, so that such a call runs eagerly with
        a warning. (Nothing cheaper is exact: NumPy keeps no version counter, and a checksum
        reads every byte as the comparison does. The walks around a trace, which look for the
        call's own writes (`attribute_counts`), compare every array up to `_ARRAY_BYTES` and keep
        identity only for a larger one: a call can write only an array its code reaches, which
        the replay's walk lists.) An object array's items are places, as a list's are."""
        if a.dtype.hasobject:
            self.object_array(source, a, depth, lazy)
            return
        checked = not self.attribute_counts     # (a walk whose guards a replay checks)
        if a.nbytes > _ARRAY_BYTES or checked and \
                self.array_bytes + a.nbytes > _ARRAY_BYTES_TOTAL:
            if checked:
                over = (f"more than the {_ARRAY_BYTES >> 20} MiB an array" if
                        a.nbytes > _ARRAY_BYTES else
                        f"past the {_ARRAY_BYTES_TOTAL >> 20} MiB of arrays in all")
                self.unguarded(source, f"a NumPy array, shape {a.shape}, {a.dtype}, "
                               f"{a.nbytes:,} bytes: {over} whose contents a replay compares")
            return
        self.array_bytes += a.nbytes
        self.guards.append(Guard(f"{source}[...]", constant(a), "array", a.copy(), lazy))

    def object_array(self, source: str, a: np.ndarray, depth: int, lazy: bool) -> None:
        """An array of Python objects: its shape and which objects it holds (by identity, an
        equal scalar as itself), then each object not a scalar, tensor or tuple of such as a
        place of its own."""
        if a.dtype != object or a.size > _ARRAY_BYTES // 8:     # (a record of object fields)
            if not self.attribute_counts:
                self.unguarded(source, f"a NumPy array, shape {a.shape}, {a.dtype}: kiln "
                               "compares the objects of an object array of at most "
                               f"{_ARRAY_BYTES >> 3:,}")
            return
        self.guards.append(Guard(f"{source}.shape", functools.partial(getattr, a, "shape"),
                                 "eq", a.shape, lazy))
        flat = functools.partial(_flat_items, a)
        items = flat()
        self.guards.append(Guard(f"{source}.flat[:]", flat, "items", tuple(items), lazy))
        for i, item in enumerate(items):
            if not _frozen(item):
                self.place(f"{source}.flat[{i}]", functools.partial(_flat_item, a, i), item,
                           depth + 1, lazy=lazy)
            elif isinstance(item, Tensor) and id(item) not in self.seen:
                self.seen.add(id(item))
                self.tensor_attributes(f"{source}.flat[{i}]", item, depth + 1, lazy)

    def imported(self, reads: Reads) -> None:
        """The user modules the call can find by name as it runs (an `import` statement in a
        function, `importlib.import_module`, `__import__`, `sys.modules[name]`), which no
        global or attribute need hold: each such module in `sys.modules` by identity there, and
        its attributes named by the code the call can run (`reads.names`; all of them where
        that code reads by computed name). A module is such a module when an `import`
        statement names it, or, for a computed name, when it holds one of those names (a
        module without one the call can only pass on). A computed name read by computed name
        is listed as unguarded."""
        if not reads.imports and not reads.dynamic_imports:
            return
        if reads.everything and reads.dynamic_imports:
            self.unguarded("the modules it finds by a computed name (importlib.import_module, "
                           "__import__, sys.modules)", "code it can run reads attributes by "
                           "computed name (getattr, vars, ...): which it reads is unknown")
            return
        names = {ANY_NAME} if reads.everything else reads.names
        for name, module in list(sys.modules.items()):
            if not isinstance(module, types.ModuleType) or _library_module(name):
                continue
            if name in reads.imports or reads.dynamic_imports and \
                    not names.isdisjoint(module.__dict__):
                self.place(f"sys.modules[{name!r}]", _item(sys.modules, name), module, 0,
                           names)

    def unread_flag(self, obj, name: str = "training") -> bool:
        """Whether the traced call read no `module.training` (or `optimizer.state`): every read
        through the class's property was told to the trace (`flag_reads`, see
        `kiln.compiler.note_flag_read` and `note_state_read`), and no code reached reads
        attributes by computed name or `__dict__` (which bypass it)."""
        if self.flag_reads is None or self.reads is None or self.reads.everything or \
                id(obj) in self.flag_reads:
            return False
        for klass in type(obj).__mro__:
            if name in vars(klass):
                return getattr(getattr(vars(klass)[name], "fget", None), "tells_reads", False)
        return False

    def too_deep(self, source: str) -> None:
        self.unguarded(source, f"more than {_OBJECT_DEPTH} levels into plain objects and "
                       "containers")

    def class_members(self, source: str, cls: type, depth: int, narrow: bool) -> None:
        """What a user class holds for its instances and callers: class-level settings
        (`Config.LR`) and its methods, whose globals and closures a call reads as the compiled
        function's own (a `forward` reading a module-level constant). With `reads`, only the
        names the call's code loads, and the dunders the interpreter calls. A class is walked
        as code is, however deep it was found (`depth` counts from it)."""
        if ("class", id(cls), narrow) in self.seen:
            return
        if depth >= _OBJECT_DEPTH:
            self.too_deep(source)
            return
        self.seen.add(("class", id(cls), narrow))
        before = []         # the user classes ahead in the MRO: one may get the name later
        for klass in cls.__mro__:
            if klass in _PLAIN_BASES or _library_module(klass.__module__):
                continue
            for name, value in list(vars(klass).items()):
                dunder = name[:2] == name[-2:] == "__"
                if dunder and not isinstance(value, types.FunctionType) or \
                        narrow and not dunder and name not in self.reads.names:
                    continue        # (`__module__`, `__dict__`, a dataclass's fields)
                for sub in before:      # `Sub.LR = ...` would hide `Base.LR` the call read
                    if name not in vars(sub):
                        self.guards.append(Guard(f"{sub.__qualname__}.{name}",
                                                 _class_attr(sub, name), "id", MISSING))
                label = f"{klass.__qualname__}.{name}"
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if isinstance(value, property):     # (replaced on the class: `C.v = property(..)`)
                    self.guards.append(Guard(label, _class_attr(klass, name), "id", value))
                    for f in (value.fget, value.fset, value.fdel):
                        if f is not None:
                            self.place(f"{label}.<{f.__name__}>", constant(f), f, depth + 1)
                    continue
                self.place(label, _class_attr(klass, name), value, depth + 1)
            before.append(klass)

    def unset(self, source: str, obj, attrs: dict) -> None:
        """Guard the names the call reads that `obj` takes from its class: set on the object
        later, they would hide the method or class attribute the trace read. (An object without
        a `__dict__` can hide nothing; a slot, a data descriptor, is never hidden.)"""
        if not isinstance(getattr(obj, "__dict__", None), dict):
            return
        for name in sorted(self.reads.names - attrs.keys() - set(_slot_names(type(obj)))):
            found = getattr(type(obj), name, MISSING)
            if found is not MISSING and not isinstance(found, property) and \
                    not name.startswith("__"):
                self.guards.append(Guard(f"{source}.{name}", _attr(obj, name), "id", MISSING))


def collect(fn, extra: list = (), attribute_counts: bool = False,
            by_name: bool = False, flag_reads: set | None = None) -> _Walk:
    """Guards for every place `fn` can reach, plus `extra` (source, reader, value) roots; with
    `attribute_counts`, also how many attributes each plain object has (to see one added);
    `by_name`, only the attributes of plain objects that code the call can run names
    (`code_reads`): the guards a replay checks; with it `flag_reads`, the ids of the modules
    whose `training` the traced call read (the others' is not guarded)."""
    reads = code_reads(fn, extra)
    walk = _Walk(attribute_counts, reads if by_name else None, flag_reads)
    walk.module_names = {ANY_NAME} if reads.everything else set(reads.names)
    walk.imported(reads)
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    names = code_names(code) if code is not None else None
    for source, read, value in list(roots(fn)) + list(extra):
        walk.place(source, read, value, 0, names)
    walk.counts_guard()
    return walk


_FUNCTION_METHODS = ("forward", "setup_context", "backward", "jvp", "vjp")


def custom_function(cls: type) -> _Walk:
    """Guards for what a custom autograd.Function's own forward, setup_context and backward
    (and jvp) can reach by name, as for the compiled function's own code: its class is reached
    only by identity, but a trace runs these (the backward while the backward graph is
    derived). A `once_differentiable` backward is walked through its wrapper."""
    walk = _Walk()
    for name in _FUNCTION_METHODS:
        fn = next((k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), None)
        fn = getattr(fn, "__func__", fn)            # a staticmethod or classmethod
        while hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        if isinstance(fn, types.FunctionType):
            walk.place(f"{cls.__name__}.{name}", constant(fn), fn, 0)
    walk.counts_guard()
    return walk


def tensor_guards(tensors: list, names: dict,
                  requires_grad_at_call: dict | None = None) -> list[Guard]:
    """Guards on the metadata of tensors a program reads by identity (shape, strides, dtype,
    device and requires_grad may change in place: `p.data = ...`, `p.requires_grad_(False)`). A
    requires_grad the call itself set is guarded on what the call found
    (`requires_grad_at_call`, id -> flag): the replay sets it again."""
    found = []
    for t in tensors:
        requires_grad = (requires_grad_at_call or {}).get(id(t), t.requires_grad)
        name = names.get(id(t), "a tensor the function reads")
        # (strides too: eager's results take their layout from them, and a replay gives eager's;
        # `module.to(memory_format=...)` changes them in place)
        found.append(Guard(f"{name}.shape and stride()",
                           lambda t=t: (t._data.shape, t._data.strides), "eq",
                           (t._data.shape, t._data.strides)))
        found.append(Guard(f"{name}.dtype", lambda t=t: t.dtype, "id", t.dtype))
        found.append(Guard(f"{name}.device", lambda t=t: t.device, "eq", t.device))
        found.append(Guard(f"{name}.requires_grad", lambda t=t: t.requires_grad, "value",
                           scalar_key(requires_grad)))
        # the trace ran the tensor's gradient hooks (register_hook, post-accumulate-grad)
        # into its backward: a hook added or removed since means tracing again
        found.append(Guard(f"{name}'s gradient hooks", functools.partial(grad_hooks_of, t),
                           "eq", grad_hooks_of(t)))
    return found


def read_at_run_time(guards: list[Guard], places: set) -> list[Guard]:
    """`guards` with each guard on one of `places` ((id(container), key): a number the program
    reads as an input on every call, such as a learning rate, or a tuple of such numbers, such
    as Adam's betas, which a scheduler replaces) relaxed to its type, and a number's to its
    type and whether it is 0 (SGD's `momentum != 0` decides the update's form)."""
    if not places:
        return guards
    relaxed = []
    for g in guards:
        if g.place in places and g.kind == "value":
            t = g.expected[0]
            number = (t, g.expected[1] == 0) if t in _NUMBERS else None
            g = Guard(g.source, g.read, "number" if number else "type", number or t, g.lazy,
                      g.place)
        elif g.place in places and g.kind == "id" and type(g.expected) is tuple:
            g = Guard(g.source, g.read, "type", tuple, g.lazy, g.place)
        relaxed.append(g)
    return relaxed


def checker(guards: list[Guard]):
    """A function of no arguments that is True while every guard holds: the replay's check,
    with identity and scalar guards (nearly all of them) compared inline."""
    ids = tuple((g.read, g.expected) for g in guards if g.kind == "id")
    values = tuple((g.read, g.expected) for g in guards if g.kind == "value")
    others = tuple(g for g in guards if g.kind not in ("id", "value", "unguarded"))

    def check() -> bool:
        try:
            for read, expected in ids:
                if read() is not expected:
                    return False
            for read, expected in values:
                value = read()
                if type(value) not in SCALARS or scalar_key(value) != expected:
                    return False
        except Exception:
            return False
        for g in others:
            if not g.holds():
                return False
        return True
    return check


def first_failure(guards: list[Guard]) -> Guard | None:
    """The first guard that no longer holds, or None when a replay is valid."""
    for g in guards:
        if not g.holds():
            return g
    return None


def changed(before: list[Guard]) -> list[Guard]:
    """The guards, taken before a call, that the call itself broke."""
    return [g for g in before if not g.holds()]


_CONTENTS = ("len", "keys", "items", "members")     # guards on what a container holds


def undo_writes(guards: list[Guard]):
    """Remember what the places of `guards` hold now. Returns a function that puts back what a
    run since changed there (assigned places; the contents of lists, dicts and sets changed in
    place) and returns the guards that run broke: for a run that eager code will make again
    (a custom Function's backward, run once more to trace it)."""
    held = []
    for g in guards:
        if g.kind in ("id", "value"):
            held.append((g, g.read()))
        else:
            copy = getattr(getattr(g.read, "container", None), "copy", None)
            held.append((g, copy() if g.kind in _CONTENTS and copy is not None else None))

    def undo() -> list[Guard]:
        broken = [(g, old) for g, old in held if not g.lazy and not g.holds()]
        for g, old in broken:            # contents first: an item's place may be gone
            container = getattr(g.read, "container", None)
            if g.kind in _CONTENTS and old is not None:
                if isinstance(container, list):
                    container[:] = old
                elif isinstance(container, collections.deque):
                    container.clear()
                    container.extend(old)
                elif isinstance(container, (dict, set)):
                    container.clear()
                    container.update(old)
        for g, old in broken:
            write = getattr(g.read, "write", None)
            if g.kind in ("id", "value") and write is not None and not g.holds():
                write(old)
        return [g for g, _ in broken]
    return undo


def tensor_writes(effects: list[Guard], computed, read) -> tuple[dict, list[Guard]]:
    """Split the guards a call broke into the places it set to a tensor it computed
    (`computed(t)`), whose old value it did not read (`read(t)` false for it), and the rest.
    Returns ({place: (guard before, tensor)}, rest)."""
    writes, rest = {}, []
    for g in effects:
        at = getattr(g.read, "at", None)
        after = g.read() if at is not None and g.kind == "id" else MISSING
        old = g.expected
        if isinstance(after, Tensor) and computed(after) and not (
                isinstance(old, Tensor) and read(old)):
            writes[at] = (g, after)
        else:
            rest.append(g)
    return writes, rest


def carried_state_guard(g: Guard) -> Guard:
    """The guard on a place whose tensor a replay reads and replaces (see `compiler`): not the
    same object each call, but a tensor like the one `g` found there, without autograd."""
    t = g.expected

    def meta(read=g.read):
        v = read()
        if not isinstance(v, Tensor) or v.requires_grad:
            return None
        return (v._data.shape, v.dtype, v.device)
    return Guard(f"{g.source} (replaced each call)", meta, "eq",
                 (t._data.shape, t.dtype, t.device))


def flag_writes(effects: list[Guard], skip: set) -> tuple[list, list[Guard]]:
    """Split the guards a call broke into the flags it set and the rest: a flag is a place that
    held a Python scalar before the call and holds one after it (`module.training`, set by
    `model.train()`), which a replay can set again, unless it is one of the places in `skip`
    (numbers the program reads on every call). Returns ({place: (guard before, value after)},
    rest); a place reached by two paths is one flag."""
    flags, rest = {}, []
    for g in effects:
        at = getattr(g.read, "at", None)
        after = g.read() if at is not None and g.kind == "value" else MISSING
        if type(after) in SCALARS and at not in skip:
            flags[at] = (g, after)
        else:
            rest.append(g)
    return flags, rest
