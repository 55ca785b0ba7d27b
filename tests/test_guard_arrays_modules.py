"""Guards on NumPy arrays' contents and on modules a call finds by name as it runs: what is
compared, what is listed as unguarded (and said), and what a call that imports nothing gets."""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest

import kiln
from kiln.compiler import guards


def _world(source: str) -> dict:
    module = types.ModuleType("stale_guard_world")
    ns = vars(module)
    ns.update(kiln=kiln, np=np)
    exec(compile(source, "<guard world>", "exec"), ns)
    return ns


@pytest.fixture(autouse=True)
def _clean_modules():
    saved = {k: sys.modules.get(k) for k in ("stale_guard_cfg", "stale_guard_pkg",
                                             "stale_guard_pkg.sub")}
    yield
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


def _calls(fn, args_list):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [fn(*args).numpy().copy() for args in args_list]
    return results, [str(w.message) for w in caught if "kiln.compile" in str(w.message)]


# ----------------------------------------------------------------------------- arrays

@pytest.mark.parametrize("a, b, equal", [
    (np.array([0.0, 1.0]), np.array([-0.0, 1.0]), False),         # the sign of zero is read
    (np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), True),       # a NaN is itself
    (np.array([1 + 2j]), np.array([1 + 2j]), True),                 # 16-byte items
    (np.array([1 + 2j]), np.array([1 - 2j]), False),
    (np.array(3.0), np.array(3.0), True),                           # 0-d
    (np.array(["ab", "cd"]), np.array(["ab", "ce"]), False),        # 8-byte-per-char items
    (np.ones((6, 6))[:, ::2], np.ones((6, 3)), True),               # strided against contiguous
    (np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),
     np.array([(0, 0.0)] * 2 + [(0, 1.0)], dtype=[("a", "i4"), ("b", "f8")]), False),
])
def test_an_array_guard_compares_every_bit(a, b, equal):
    guard = guards.Guard("A", guards.constant(b), "array", a.copy())
    assert guard.holds() is equal
    assert guards.Guard("A", guards.constant(a.reshape(-1, 1) if a.ndim else a[None]), "array",
                        a.copy()).holds() is False      # another shape


def test_an_array_guard_sees_a_write_through_a_view_and_a_new_dtype():
    a = np.ones(100, dtype=np.float32)
    walk = guards._Walk()
    walk.place("A", guards.constant(a), a, 0)
    check = guards.checker(walk.guards)
    assert check()
    a[:10][3] = 2.0
    assert not check()
    a[3] = 1.0
    assert check()
    a.dtype = np.int32
    assert not check()


def test_an_array_past_the_cap_runs_eagerly_with_one_warning_naming_it():
    ns = _world("""
BIG = np.ones(300_000, dtype=np.float32)
def f(x):
    return x * float(BIG[0])
""")
    fn = kiln.compile(ns["f"])
    x = kiln.ones(3)
    results, told = [], []
    for v in (1.0, 2.0, 3.0):
        ns["BIG"][0] = v
        r, t = _calls(fn, [(x,)])
        results += r
        told += t
    for v, r in zip((1.0, 2.0, 3.0), results):
        np.testing.assert_array_equal(r, np.full(3, v, dtype=np.float32))
    assert len(told) == 1, told
    assert "BIG" in told[0] and "(300000,)" in told[0] and "float32" in told[0], told[0]
    listed = [g.describe() for e in fn.entries.values() for g in e.guards
              if g.kind == "unguarded"]
    assert listed and "BIG" in listed[0] and "1,200,000 bytes" in listed[0], listed


def test_explain_lists_an_array_past_the_cap():
    ns = _world("""
BIG = np.zeros((2000, 200))
def f(x):
    return x + float(BIG[1, 1])
""")
    out = kiln.compiler.explain(ns["f"], kiln.ones(2))
    text = str(out)
    assert "NOT GUARDED" in text and "BIG" in text and "(2000, 200)" in text, text


def test_arrays_up_to_the_cap_are_guarded_by_content_and_replay():
    ns = _world("""
T = np.arange(65536, dtype=np.float32)
def f(x):
    return x * float(T[7])
""")
    fn = kiln.compile(ns["f"])
    x = kiln.ones(2)
    first, told = _calls(fn, [(x,), (x,), (x,)])
    ns["T"][7] = 9.0
    second, told2 = _calls(fn, [(x,), (x,)])
    assert not told and not told2
    np.testing.assert_array_equal(first[-1], np.full(2, 7.0, dtype=np.float32))
    np.testing.assert_array_equal(second[-1], np.full(2, 9.0, dtype=np.float32))
    assert sum(e.calls for e in fn.entries.values() if e.program is not None) >= 3


def test_a_large_array_the_call_cannot_name_keeps_it_compiled():
    """The walk before a trace reads every attribute; an array there that no code the call
    runs names is not listed (the call could not read it)."""
    ns = _world("""
class Trainer:
    pass
tr = Trainer()
tr.data = np.ones(1_000_000)
tr.scale = 2.0
def f(x, t):
    return x * t.scale
""")
    fn = kiln.compile(ns["f"])
    x = kiln.ones(2)
    results, told = _calls(fn, [(x, ns["tr"])] * 3)
    assert not told
    np.testing.assert_array_equal(results[-1], np.full(2, 2.0, dtype=np.float32))
    assert all(e.program is not None for e in fn.entries.values())


# ----------------------------------------------------------------------------- modules

def test_the_import_forms_are_told_apart_from_other_names():
    def imports(x):
        import stale_guard_cfg      # noqa: F401
        from stale_guard_pkg import sub     # noqa: F401
        return x

    def dynamic(x):
        return sys.modules["m"]

    def not_imports(x, model):
        return list(model.modules()), x.sys.modules

    static, found = guards._imports_of(imports.__code__)
    assert {name for name, _, _ in static} == {"stale_guard_cfg", "stale_guard_pkg"} and \
        not found
    assert guards._module_names(static, {}) == {"stale_guard_cfg", "stale_guard_pkg",
                                                 "stale_guard_pkg.sub"}
    assert guards._imports_of(dynamic.__code__) == (frozenset(), True)
    assert guards._imports_of(not_imports.__code__) == (frozenset(), False)
    assert guards._module_names(frozenset({("", 1, ("q",)), ("r.s", 2, ())}),
                                {"__package__": "a.b"}) == {"a.b", "a.b.q", "a", "a.r",
                                                            "a.r.s"}


def test_a_call_that_imports_nothing_gets_no_module_guards():
    ns = _world("""
K = 2.0
def f(x):
    import math
    return x * K * math.pi
""")
    reads = guards.code_reads(ns["f"])
    assert reads.imports == {"math"} and not reads.dynamic_imports
    found = guards.collect(ns["f"], by_name=True).guards
    assert not [g for g in found if g.source.startswith("sys.modules")], \
        [g.source for g in found]


def test_a_module_found_by_import_module_is_guarded_on_the_names_the_code_loads():
    cfg = types.ModuleType("stale_guard_cfg")
    cfg.lr, cfg.unread = 1.0, 5.0
    sys.modules["stale_guard_cfg"] = cfg
    ns = _world("""
import importlib
def helper():
    return importlib.import_module("stale_guard_cfg")
def f(x):
    return x * helper().lr
""")
    found = {g.source for g in guards.collect(ns["f"], by_name=True).guards}
    assert "sys.modules['stale_guard_cfg']" in found
    assert "sys.modules['stale_guard_cfg'].lr" in found
    assert "sys.modules['stale_guard_cfg'].unread" not in found
    fn = kiln.compile(ns["f"])
    x = kiln.ones(2)
    results, told = _calls(fn, [(x,), (x,)])
    cfg.unread = 6.0            # not read: still replays
    more, told2 = _calls(fn, [(x,)])
    cfg.lr = 3.0
    last, told3 = _calls(fn, [(x,)])
    assert not (told or told2 or told3)
    np.testing.assert_array_equal(more[0], np.ones(2, dtype=np.float32))
    np.testing.assert_array_equal(last[0], np.full(2, 3.0, dtype=np.float32))
    assert sum(e.calls for e in fn.entries.values() if e.program is not None) >= 2


def test_a_module_found_by_a_computed_name_and_read_by_computed_name_runs_eagerly():
    cfg = types.ModuleType("stale_guard_cfg")
    cfg.lr = 1.0
    sys.modules["stale_guard_cfg"] = cfg
    ns = _world("""
import importlib
def f(x):
    return x * getattr(importlib.import_module("stale_guard_cfg"), "lr")
""")
    fn = kiln.compile(ns["f"])
    x = kiln.ones(2)
    results, told = _calls(fn, [(x,)])
    cfg.lr = 4.0
    more, told2 = _calls(fn, [(x,)])
    np.testing.assert_array_equal(more[0], np.full(2, 4.0, dtype=np.float32))
    assert len(told) == 1 and "computed name" in told[0], told
    assert not told2
