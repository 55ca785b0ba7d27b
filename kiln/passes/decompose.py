"""Decomposition: primitives that exist for eager speed, rewritten into fusible ones.

Training-mode batch norm is three primitives (`batch_norm`, `batch_norm_backward`,
`batch_stats`) so that eager mode runs each as one NumPy call; to the fusion pass they would be
opaque externs. Before fusing, the compiler rewrites every node whose primitive has a
`decompose` rule (written beside the primitive, in `kiln.ir.ops`) into the sums and elementwise
ops it stands for: the statistics become reductions fused with the passes around them, and CSE
shares the mean and variance that `batch_norm` and `batch_stats` both compute from one input.
The NumPy executor, which does not fuse, keeps the primitives.
"""

from __future__ import annotations

from kiln.ir.graph import Graph, Value
from kiln.ir.ops import PRIMITIVES
from kiln.passes.cleanup import _substitute, copy_graph


class _Builder:
    """Appends nodes to a graph under one source location and provenance scope, typed by each
    op's own rule."""

    def __init__(self, graph: Graph, loc: str, scope: tuple = ()):
        self.graph, self.loc, self.scope = graph, loc, scope

    def op(self, name: str, *inputs, **attrs) -> Value:
        shapes = tuple(v.shape if isinstance(v, Value) else () for v in inputs)
        dtypes = tuple(v.dtype if isinstance(v, Value) else None for v in inputs)
        shape, dtype = PRIMITIVES[name].infer(shapes, dtypes, **attrs)
        return self.graph.add_node(name, inputs, attrs, shape, dtype, self.loc, self.scope)


def decomposable() -> frozenset:
    """The primitives this pass rewrites: those with a `decompose` rule."""
    return frozenset(name for name, p in PRIMITIVES.items() if p.decompose is not None)


def decompose(graph: Graph) -> Graph:
    """`graph` with every node whose primitive has a `decompose` rule rewritten by it."""
    if not any(n.prim.decompose is not None for n in graph.nodes):
        return graph
    g = copy_graph(graph, [])
    replace = {}
    for n in graph.nodes:
        rule = n.prim.decompose
        if rule is None:
            g.nodes.append(n)
            continue
        value = rule(_Builder(g, n.loc, n.scope), *n.inputs, **n.attr_dict)
        assert value.shape == n.out.shape and value.dtype is n.out.dtype, n
        replace[n.out] = value
    return _substitute(g, replace)


__all__ = ["decomposable", "decompose"]
