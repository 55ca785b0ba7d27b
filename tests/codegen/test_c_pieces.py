"""The C renderer's per-piece form of a pointwise kernel: a concatenation spelled as a sum of
zero-padded pieces (the backward of slices) is written as one loop nest per piece, with no
select and no division, and computes what the IR interpreter computes."""

from __future__ import annotations

import re

import numpy as np
import pytest

import kiln
import kiln.nn.functional as F
from kiln.codegen import c as cgen
from kiln.codegen.kernel import lower
from kiln.compiler import trace
from kiln.ir.interpreter import interpret
from kiln.runtime import c_build

pytestmark = pytest.mark.skipif(c_build.compiler_problem() is not None,
                                reason="needs a working C compiler with OpenMP")


def _gates(a, b, c, d):
    """Four (20, 128) gate gradients joined along the last axis, as an LSTM's backward does."""
    return (F.pad(a * 2.0, (0, 384)) + F.pad(b, (128, 256)) + F.pad(c - d, (256, 128))
            + F.pad(d, (384, 0)))


def _uneven(a, b, c):
    """Pieces of 9, 50 and 11 along the last axis, each with arithmetic of its own."""
    return F.pad(a.abs(), (0, 61)) + F.pad(b * b, (9, 11)) + F.pad(c + 1.0, (59, 0))


def _middle(a, b, c):
    """Pieces of 3, 7 and 1 along the middle axis of (2, 11, 5)."""
    return F.pad(a, (0, 0, 0, 8)) + F.pad(b * 3.0, (0, 0, 3, 1)) + F.pad(c, (0, 0, 10, 0))


CASES = [
    ("gates", _gates, [(20, 128)] * 4, "x1"),
    ("uneven", _uneven, [(4, 9), (4, 50), (4, 11)], "x1"),
    ("middle", _middle, [(2, 3, 5), (2, 7, 5), (2, 1, 5)], "x1"),
    # a conv's pad on both spatial axes: the inner loop's pieces (1, 7, 2) are too short to
    # be loops of their own, so the outer axis is cut and the inner one keeps its selects
    ("pad_hw", lambda x: F.pad(x, (1, 2, 1, 1)) * 2.0 - 1.0, [(2, 3, 6, 7)], "x2"),
]


@pytest.fixture(scope="module")
def rendered():
    rng = np.random.default_rng(5)
    items = {}
    for i, (name, fn, shapes, var) in enumerate(CASES):
        arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        graph = trace(fn, *[kiln.tensor(a) for a in arrays]).graphs[0]
        items[name] = (graph, arrays, var, cgen.render_c(lower(graph), name=f"pieces{i}"))
    lib = c_build.load(c_build.start_build(cgen.c_module([x[-1] for x in items.values()])))
    return items, lib


def _run(ck, lib, graph, arrays) -> list:
    outs = [np.empty(v.shape, v.dtype.np) for v in graph.outputs]
    fn = c_build.kernel_function(lib, ck.name, len(arrays) + len(outs))
    fn(*[c_build.data_pointer(a) for a in arrays + outs])
    return outs


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_pieces_match_ir_interpreter(rendered, name):
    items, lib = rendered
    graph, arrays, _, ck = items[name]
    want, _ = interpret(graph, arrays)
    got = _run(ck, lib, graph, arrays)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        # the same float32 adds of the same values (a piece plus the others' zeros): exact
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_each_piece_has_a_loop_without_division(rendered, name):
    items, _ = rendered
    graph, _, var, ck = items[name]
    pieces = re.findall(rf"/\* {var} in \[(\d+), (\d+)\)", ck.source)
    size = graph.outputs[0].shape[int(var[1:])]
    bounds = [int(x) for p in pieces for x in p]
    assert bounds[0] == 0 and bounds[-1] == size and len(pieces) >= 3
    assert all(bounds[i] == bounds[i + 1] for i in range(1, len(bounds) - 1, 2))
    code = [ln for ln in ck.source.split("{", 1)[1].splitlines()
            if not ln.strip().startswith(("//", "/*"))]
    body = "\n".join(code)
    if name == "pad_hw":
        # the cut axis (height 6 + 2) is neither divided nor tested; the width still is
        assert "% 6" not in body and not re.search(r"v_idx\d+ = x2;", body), body
        assert re.search(r"v_idx\d+ = x3;", body) and "?" in body
    else:
        assert "%" not in body and "/" not in body and "?" not in body, body


def test_gates_pieces_load_only_their_own_input(rendered):
    items, _ = rendered
    ck = items["gates"][-1]
    pieces = ck.source.split("/* x1 in [")[1:]
    assert len(pieces) == 4
    for piece, own in zip(pieces, ("a", "b", "c", "d")):
        loads = re.findall(r"= (\w)_ptr\[", piece)
        assert loads == ([own] if own != "c" else ["c", "d"])


EDGES = [
    # a piece that is only padding: its store is the pad value itself
    ("zero_tail", lambda a: F.pad(a, (0, 16)), [((3, 8), np.float32)]),
    ("int64_pieces", lambda a, b: F.pad(a, (0, 9)) + F.pad(b * 2, (8, 0)),
     [((3, 8), np.int64), ((3, 9), np.int64)]),
    ("float16_pieces", lambda a, b: F.pad(a, (0, 9)) + F.pad(b, (8, 0)),
     [((3, 8), np.float16), ((3, 9), np.float16)]),
    # big enough for threads: each piece's nest is shared among them
    ("threaded", lambda a, b: (F.pad(a, (0, 300)) + F.pad(b, (200, 0))).tanh(),
     [((600, 200), np.float32), ((600, 300), np.float32)]),
]


def test_piece_edge_cases_match_ir_interpreter():
    rng = np.random.default_rng(6)
    items = []
    for i, (name, fn, specs) in enumerate(EDGES):
        arrays = [(rng.standard_normal(s) * 4).astype(d) for s, d in specs]
        graph = trace(fn, *[kiln.tensor(a) for a in arrays]).graphs[0]
        ck = cgen.render_c(lower(graph), name=f"edge{i}")
        assert "one piece" in ck.source, name
        items.append((name, graph, arrays, ck))
    # one team for all the pieces, each piece's loop shared without a barrier after it
    threaded = items[-1][-1].source
    assert threaded.count("#pragma omp parallel\n") == 1 and threaded.count("nowait") == 2
    lib = c_build.load(c_build.start_build(cgen.c_module([x[-1] for x in items])))
    for name, graph, arrays, ck in items:
        want, _ = interpret(graph, arrays)
        for g, w in zip(_run(ck, lib, graph, arrays), want):
            if name == "threaded":       # kiln's float32 tanh is within a couple of ulps
                np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
            else:
                np.testing.assert_array_equal(g, w)
