"""Graph documents: a graph decoded with its nodes given apart reads like one decoded whole,
decodes its nodes once, on first use, and keeps its outputs and write-backs pointing into them."""

import copy
import json
import pickle

import numpy as np
import pytest

import kiln
from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph
from tests.tracer.test_trace_corpus import CASES


def _graphs():
    for name in sorted(CASES):
        kiln.manual_seed(0)
        fn, args = CASES[name]()
        for graph in kiln.compiler.trace(fn, *args).graphs:
            yield name, graph


def _apart(graph, calls=None):
    """`graph` decoded from a JSON document without its nodes, the nodes given apart."""
    doc = json.loads(json.dumps(graph.to_doc()))
    head = json.loads(json.dumps(Graph.doc_without_nodes(doc)))

    def nodes():
        if calls is not None:
            calls.append(1)
        return doc["nodes"]
    return Graph.from_doc(head, nodes=nodes)


@pytest.mark.parametrize("name,graph", list(_graphs()), ids=lambda x: x if isinstance(x, str)
                         else "")
def test_nodes_given_apart_decode_to_the_same_graph(name, graph):
    whole = Graph.from_doc(json.loads(json.dumps(graph.to_doc())))
    calls = []
    apart = _apart(graph, calls)
    outputs, mutations, next_id = list(apart.outputs), list(apart.mutations), apart._next_id
    assert calls == [] and "nodes" not in vars(apart)
    assert [(v.shape, v.dtype) for v in apart.inputs] == [(v.shape, v.dtype) for v in graph.inputs]
    assert str(apart) == str(whole) == str(graph)
    assert apart.structure() == whole.structure() == graph.structure()
    assert next_id == whole._next_id and calls == [1]
    apart.verify()
    defined = {n.out for n in apart.nodes} | set(apart.inputs) | set(apart.constants)
    assert all(v in defined for v in outputs)          # the very Values the nodes define
    assert all(a in defined and b in defined for a, b in mutations)
    len(apart.nodes)
    assert calls == [1]


def test_copies_and_pickles_get_the_nodes():
    g = Graph("f")
    x = g.add_input((3,), dt.float32, "x")
    g.outputs = [g.add_node("exp", (g.add_node("mul", (x, 2.0), {}, (3,), dt.float32),), {},
                            (3,), dt.float32)]
    calls = []
    apart = _apart(g, calls)
    twin = copy.copy(apart)
    assert twin.nodes is apart.nodes and calls == [1]
    assert twin.outputs[0] is apart.nodes[-1].out
    for again in (copy.deepcopy(_apart(g)), pickle.loads(pickle.dumps(_apart(g)))):
        assert str(again) == str(g) and "_deferred" not in vars(again)
        assert again.outputs[0] is again.nodes[-1].out


def test_constants_survive_exactly():
    g = Graph("c")
    values = np.array([np.nan, -0.0, np.inf, 1e-45, -3.25], dtype=np.float32)
    c = g.add_constant(values, dt.float32)
    flags = g.add_constant(np.array([[True, False]]), dt.bool_)
    g.outputs = [c, flags]
    back = Graph.from_doc(json.loads(json.dumps(g.to_doc())))
    got, got_flags = back.constants.values()
    assert got.tobytes() == values.tobytes() and got.flags.writeable
    np.testing.assert_array_equal(got_flags, [[True, False]])
