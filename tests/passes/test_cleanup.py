"""Cleanup passes: each keeps verify() and the interpreter's results, and does its rewrite."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph
from kiln.passes.cleanup import CLEANUP_PASSES, cse, dce, fold_constants, optimize, simplify
from tests.passes.helpers import CASES, assert_same_results, trace_random_program, traced
from tests.tracer.test_random_programs import programs

F32 = dt.float32


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_pass_keeps_results_on_corpus(name):
    graph, inputs = traced(name)
    for _, fn in CLEANUP_PASSES:
        out = fn(graph)
        out.verify()
        assert_same_results(graph, out, inputs)
    optimized, stats = optimize(graph)
    optimized.verify()
    assert_same_results(graph, optimized, inputs)
    assert len(optimized.nodes) <= len(graph.nodes)
    assert stats[0].nodes_before == len(graph.nodes)
    assert stats[-1].nodes_after == len(optimized.nodes)
    assert len(graph.nodes) == stats[0].nodes_before      # the input graph is untouched


@settings(max_examples=40, deadline=None)
@given(programs(), st.integers(0, 2 ** 31))
def test_optimize_keeps_results_on_random_programs(program, seed):
    graph, inputs = trace_random_program(program, seed)
    optimized, _ = optimize(graph)
    optimized.verify()
    assert_same_results(graph, optimized, inputs, rtol=1e-9, atol=1e-12)


def _graph():
    g = Graph("t")
    x = g.add_input((3, 4), F32, "x")
    return g, x


def test_dce_keeps_outputs_and_write_backs_only():
    g, x = _graph()
    dead = g.add_node("exp", (x,), {}, (3, 4), F32)
    out = g.add_node("neg", (x,), {}, (3, 4), F32)
    new = g.add_node("mul", (x, 2.0), {}, (3, 4), F32)
    g.add_node("sin", (dead,), {}, (3, 4), F32)
    g.outputs = [out]
    g.mutations = [(x, new)]
    d = dce(g)
    d.verify()
    assert [n.op for n in d.nodes] == ["neg", "mul"]


def test_cse_merges_equal_nodes_but_not_different_literals_or_random():
    g, x = _graph()
    a = g.add_node("mul", (x, 2.0), {}, (3, 4), F32)
    b = g.add_node("mul", (x, 2.0), {}, (3, 4), F32)
    c = g.add_node("mul", (x, 3.0), {}, (3, 4), F32)
    s = g.add_input((), dt.int64, "seed", kind="seed")
    r1 = g.add_node("rand", (s,), {"shape": (3, 4), "dtype": F32}, (3, 4), F32)
    r2 = g.add_node("rand", (s,), {"shape": (3, 4), "dtype": F32}, (3, 4), F32)
    g.outputs = [g.add_node("add", (a, b), {}, (3, 4), F32), c, r1, r2]
    out = cse(g)
    out.verify()
    assert [n.op for n in out.nodes] == ["mul", "mul", "rand", "rand", "add"]
    assert out.nodes[-1].inputs == (a, a)


def test_fold_constants_evaluates_small_constant_work():
    g, x = _graph()
    c = g.add_constant(np.arange(4, dtype=np.float32), F32)
    two = g.add_node("full", (), {"shape": (4,), "value": 2.0, "dtype": F32}, (4,), F32)
    k = g.add_node("mul", (c, two), {}, (4,), F32)
    u = g.add_node("add", (two, 1.0), {}, (4,), F32)
    g.outputs = [g.add_node("add", (x, k), {}, (3, 4), F32), u]
    out = fold_constants(g)
    out.verify()
    assert [n.op for n in out.nodes] == ["full", "add"]       # uniform result stays a `full`
    np.testing.assert_array_equal(out.constants[k], [0, 2, 4, 6])
    assert out.nodes[0].attr_dict["value"] == 3.0
    assert_same_results(g, out, [np.ones((3, 4), np.float32)])


def test_simplify_identities_and_view_chains():
    g, x = _graph()
    a = g.add_node("mul", (x, 1), {}, (3, 4), F32)
    b = g.add_node("div", (a, 1.0), {}, (3, 4), F32)
    c = g.add_node("neg", (b,), {}, (3, 4), F32)
    d = g.add_node("neg", (c,), {}, (3, 4), F32)
    e = g.add_node("reshape", (d,), {"shape": (12,)}, (12,), F32)
    f = g.add_node("reshape", (e,), {"shape": (2, 6)}, (2, 6), F32)
    p = g.add_node("permute", (x,), {"perm": (1, 0)}, (4, 3), F32)
    q = g.add_node("permute", (p,), {"perm": (1, 0)}, (3, 4), F32)
    h = g.add_node("cast", (q,), {"dtype": F32}, (3, 4), F32)
    bias = g.add_input((4,), F32, "b")
    big = g.add_node("expand", (bias,), {"shape": (3, 4)}, (3, 4), F32)
    s = g.add_node("add", (h, big), {}, (3, 4), F32)
    z = g.add_node("add", (x, 0.0), {}, (3, 4), F32)     # -0.0 + 0.0: not an identity
    g.outputs = [f, s, z]
    out = simplify(g)
    out.verify()
    assert [n.op for n in out.nodes] == ["reshape", "add", "add"]
    assert out.nodes[0].inputs == (x,) and out.nodes[1].inputs == (x, bias)
    rng = np.random.default_rng(0)
    assert_same_results(g, out, [rng.standard_normal((3, 4)).astype(np.float32),
                                 rng.standard_normal(4).astype(np.float32)])


def test_integer_sub_of_itself_is_zeros_but_float_is_not():
    g = Graph("t")
    i = g.add_input((3,), dt.int64, "i")
    x = g.add_input((3,), F32, "x")
    g.outputs = [g.add_node("sub", (i, i), {}, (3,), dt.int64),
                 g.add_node("sub", (x, x), {}, (3,), F32)]
    out = simplify(g)
    out.verify()
    assert [n.op for n in out.nodes] == ["full", "sub"]
    assert_same_results(g, out, [np.arange(3), np.array([1.0, np.inf, np.nan], np.float32)])
