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
from kiln.passes.cleanup import _substitute, copy_graph


class _Builder:
    """Appends nodes to a graph under one source location."""

    def __init__(self, graph: Graph, loc: str):
        self.graph, self.loc = graph, loc

    def op(self, name: str, inputs: tuple, out_shape, dtype, **attrs) -> Value:
        return self.graph.add_node(name, inputs, attrs, out_shape, dtype, self.loc)

    def binary(self, name: str, a, b) -> Value:
        like = [v for v in (a, b) if isinstance(v, Value)]
        shape = like[0].shape if len(like) == 1 else _broadcast(like[0].shape, like[1].shape)
        return self.op(name, (a, b), shape, like[0].dtype)

    def channel_mean(self, x: Value) -> Value:
        """The mean of `x` (N, C, ...) over every dim but 1, as (1, C, 1, ...)."""
        axes = (0,) + tuple(range(2, len(x.shape)))
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        total = self.op("sum", (x,), kept, x.dtype, axes=axes, keepdim=True)
        return self.binary("mul", total, 1.0 / _count(x))

    def statistics(self, x: Value, eps: float) -> tuple:
        """(centered x, 1 / sqrt(biased variance + eps)), per channel."""
        centered = self.binary("sub", x, self.channel_mean(x))
        var = self.channel_mean(self.binary("mul", centered, centered))
        root = self.op("sqrt", (self.binary("add", var, eps),), var.shape, var.dtype)
        return centered, self.binary("div", 1.0, root)


def _count(x: Value) -> int:
    return math.prod(x.shape) // x.shape[1]


def _broadcast(a: tuple, b: tuple) -> tuple:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    return tuple(max(p, q) for p, q in zip(a, b))


def _batch_norm(b: _Builder, x, eps) -> Value:
    centered, invstd = b.statistics(x, eps)
    return b.binary("mul", centered, invstd)


def _batch_norm_backward(b: _Builder, g, xhat, x, eps) -> Value:
    # invstd * (g - xhat * mean(g * xhat) - mean(g)), in the order the primitive computes it
    _, invstd = b.statistics(x, eps)
    out = b.binary("sub", g, b.binary("mul", xhat, b.channel_mean(b.binary("mul", g, xhat))))
    out = b.binary("sub", out, b.channel_mean(g))
    return b.binary("mul", out, invstd)


def _batch_stats(b: _Builder, x) -> Value:
    # the same keepdim mean and variance nodes as _batch_norm's, so CSE merges the two
    c = x.shape[1]
    mean = b.channel_mean(x)
    centered = b.binary("sub", x, mean)
    var = b.channel_mean(b.binary("mul", centered, centered))
    rows = [b.op("reshape", (v,), (1, c), x.dtype, shape=(1, c)) for v in (mean, var)]
    return b.op("cat", tuple(rows), (2, c), x.dtype, axis=0)


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
        value = rule(_Builder(g, n.loc), *n.inputs, **n.attr_dict)
        assert value.shape == n.out.shape and value.dtype is n.out.dtype, n
        replace[n.out] = value
    return _substitute(g, replace)


__all__ = ["RULES", "decompose"]
