"""A concatenation of reshaped pieces along the outermost axis becomes a reshape of the pieces'
concatenation.

`stack` of steps x[t] (an RNN's outputs over time) is traced as a `cat` along axis 0 of unit
reshapes x[t] -> (1, *x.shape): each reshape is a view the executor makes one step at a time,
70 of them in a 2-layer LSTM over 35 steps. Along the outermost axis a concatenation lays its
pieces one after another in row-major memory, so concatenating the reshaped pieces gives the
same elements in the same order as concatenating the pieces themselves and reshaping once; that
holds whenever the pieces themselves can be concatenated (the same shape past their first axis).
"""

from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.cleanup import copy_graph, dce


def concatenate_before_reshapes(graph: Graph) -> Graph:
    """Rewrite each `cat` along axis 0 whose every input is a `reshape` of a value with at least
    one axis, those values alike past their first axis, into a `cat` of those values along
    axis 0 and one `reshape` to the cat's shape.

    Returns a new graph (or `graph` itself when nothing matched); each rewritten cat's Value
    keeps its identity, now computed by the reshape. A reshape other nodes read stays for them.
    """
    producers = graph.producers()
    sources: dict = {}                  # cat Node -> the values its reshapes read
    for n in graph.nodes:
        if n.op != "cat" or n.attr_dict["axis"] != 0 or len(n.inputs) < 2 or \
                not all(isinstance(x, Value) for x in n.inputs):
            continue
        made = [producers.get(x) for x in n.inputs]
        if not all(p is not None and p.op == "reshape" and isinstance(p.inputs[0], Value)
                   for p in made):
            continue
        pieces = tuple(p.inputs[0] for p in made)
        first = pieces[0]
        if not first.shape or any(len(v.shape) != len(first.shape) or
                                  v.shape[1:] != first.shape[1:] or v.dtype is not first.dtype
                                  for v in pieces):
            continue
        sources[n] = pieces
    if not sources:
        return graph
    g = copy_graph(graph, [])
    for n in graph.nodes:
        pieces = sources.get(n)
        if pieces is None:
            g.nodes.append(n)
            continue
        rows = sum(v.shape[0] for v in pieces)
        catted = g.add_node("cat", pieces, {"axis": 0}, (rows,) + pieces[0].shape[1:],
                            n.out.dtype, n.loc, n.scope)
        g.nodes.append(Node("reshape", (catted,), (("shape", n.out.shape),), n.out, n.loc,
                            n.scope))
    return dce(g)


__all__ = ["concatenate_before_reshapes"]
