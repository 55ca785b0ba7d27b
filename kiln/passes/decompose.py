"""Decomposition: primitives that exist for eager speed, rewritten into fusible ones.

Training-mode batch norm is three primitives (`batch_norm`, `batch_norm_backward`,
`batch_stats`) so that eager mode runs each as one NumPy call; to the fusion pass they would be
opaque externs. Before fusing, the compiler rewrites them into the sums and elementwise ops
they stand for: the statistics become reductions fused with the passes around them, and CSE
shares the mean and variance that `batch_norm` and `batch_stats` both compute from one input.
The NumPy executor, which does not fuse, keeps the primitives.
"""

from __future__ import annotations

import math

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

    def channel_mean(self, x: Value) -> Value:
        """The mean of `x` (N, C, ...) over every dim but 1, as (1, C, 1, ...)."""
        total = self.op("sum", x, axes=(0,) + tuple(range(2, len(x.shape))), keepdim=True)
        return self.op("mul", total, 1.0 / (math.prod(x.shape) // x.shape[1]))

    def statistics(self, x: Value, eps: float) -> tuple:
        """(centered x, 1 / sqrt(biased variance + eps)), per channel."""
        centered = self.op("sub", x, self.channel_mean(x))
        var = self.channel_mean(self.op("mul", centered, centered))
        return centered, self.op("div", 1.0, self.op("sqrt", self.op("add", var, eps)))


def _batch_norm(b: _Builder, x, eps) -> Value:
    centered, invstd = b.statistics(x, eps)
    return b.op("mul", centered, invstd)


def _batch_norm_backward(b: _Builder, g, xhat, x, eps) -> Value:
    # invstd * (g - xhat * mean(g * xhat) - mean(g)), in the order the primitive computes it
    _, invstd = b.statistics(x, eps)
    out = b.op("sub", g, b.op("mul", xhat, b.channel_mean(b.op("mul", g, xhat))))
    out = b.op("sub", out, b.channel_mean(g))
    return b.op("mul", out, invstd)


def _batch_stats(b: _Builder, x) -> Value:
    # the same keepdim mean and variance nodes as _batch_norm's, so CSE merges the two
    mean = b.channel_mean(x)
    centered = b.op("sub", x, mean)
    var = b.channel_mean(b.op("mul", centered, centered))
    rows = (b.op("reshape", v, shape=(1, x.shape[1])) for v in (mean, var))
    return b.op("cat", *rows, axis=0)


RULES = {"batch_norm": _batch_norm, "batch_norm_backward": _batch_norm_backward,
         "batch_stats": _batch_stats}


def decompose(graph: Graph) -> Graph:
    """`graph` with every primitive in RULES rewritten into fusible primitives."""
    if not any(n.op in RULES for n in graph.nodes):
        return graph
    g = copy_graph(graph, [])
    replace = {}
    for n in graph.nodes:
        rule = RULES.get(n.op)
        if rule is None:
            g.nodes.append(n)
            continue
        value = rule(_Builder(g, n.loc, n.scope), *n.inputs, **n.attr_dict)
        assert value.shape == n.out.shape and value.dtype is n.out.dtype, n
        replace[n.out] = value
    return _substitute(g, replace)


__all__ = ["RULES", "decompose"]
