"""Sums of zero-padded pieces that do not overlap become one concatenation.

The gradient of a slice is the slice's gradient zero-padded to the sliced tensor's shape, so a
tensor split into pieces (an RNN's input projection split into time steps, `chunk`, `unbind`)
gets its gradient as a sum of padded pieces, each as large as the whole: T pieces cost T full
passes, or T log T for the balanced split `kiln.nn.rnn` uses. Where the pieces lie side by side
along one axis, that sum is their concatenation (with zeros in any gap): one copy of each piece.
Only done along an outermost axis (all axes before it of size 1), where each piece is one
contiguous block of the result; pieces side by side within rows (an LSTM's four gates) are
left to the kernel that sums the pads, which fuses with their producers and readers.
"""

from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.cleanup import copy_graph, dce


def concatenate_padded_sums(graph: Graph) -> Graph:
    """Rewrite each tree of `add`s over zero `pad`s (nested: a padded sum of padded pieces) whose
    pieces lie apart along one outermost axis into one `cat` of the pieces and zero fillers.

    Returns a new graph (or `graph` itself when nothing matched); each tree's root Value keeps
    its identity, now computed by the `cat`.
    """
    producers = graph.producers()
    users = graph.users()
    leaving = set(graph.outputs) | {new for _, new in graph.mutations}

    def only_reader(v: Value):
        readers = users.get(v, [])
        return readers[0] if v not in leaving and len(readers) == 1 else None

    described: dict = {}            # add output -> (axis, [(offset, piece Value)])

    def pieces_of(v: Value, reader: Node):
        """(axis, pieces) when `v`, read only by `reader`, is zero outside pieces along one
        axis: a zero pad of one axis (of a piece, or of a described sum), or a described sum."""
        if not isinstance(v, Value) or only_reader(v) is not reader:
            return None
        if v in described:
            return described[v]
        p = producers.get(v)
        if p is None or p.op != "pad" or p.attr_dict["value"] != 0:
            return None
        padded = [i for i, (lo, hi) in enumerate(p.attr_dict["pads"]) if lo or hi]
        if len(padded) != 1 or any(lo < 0 or hi < 0 for lo, hi in p.attr_dict["pads"]):
            return None
        axis, lo = padded[0], p.attr_dict["pads"][padded[0]][0]
        inner = p.inputs[0]
        nested = described.get(inner) if only_reader(inner) is p else None
        if nested is not None and nested[0] == axis:
            return axis, [(lo + off, x) for off, x in nested[1]]
        return axis, [(lo, inner)]

    for n in graph.nodes:
        if n.op != "add" or len(n.inputs) != 2 or \
                not all(isinstance(x, Value) and x.shape == n.out.shape and
                        x.dtype is n.out.dtype for x in n.inputs):
            continue
        a, b = (pieces_of(x, n) for x in n.inputs)
        if a is None or b is None or a[0] != b[0]:
            continue
        axis = a[0]
        if any(d != 1 for d in n.out.shape[:axis]):
            continue        # pieces strided in memory: a kernel summing pads fuses better
        merged = sorted(a[1] + b[1], key=lambda p: p[0])
        if all(off + x.shape[axis] <= nxt for (off, x), (nxt, _) in zip(merged, merged[1:])):
            described[n.out] = (axis, merged)
    if not described:
        return graph

    # a described sum that a larger one takes in is dead once that one is a cat
    absorbed = set()
    for v in described:
        reader = only_reader(v)
        if reader is not None and reader.op == "pad":
            reader = only_reader(reader.out)
        if reader is not None and reader.out in described:
            absorbed.add(v)
    g = copy_graph(graph, [])
    for n in graph.nodes:
        if n.out in described and n.out not in absorbed:
            _emit_cat(g, n, *described[n.out], producers)
        else:
            g.nodes.append(n)
    return dce(g)


def _emit_cat(g: Graph, root: Node, axis: int, pieces: list, producers: dict) -> None:
    """Append to `g` the cat computing `root.out` from `pieces`, zeros filling the gaps."""
    shape, dtype = root.out.shape, root.out.dtype
    unit = [producers.get(x) for _, x in pieces]
    if axis == 0 and sum(x.shape[0] for _, x in pieces) == shape[0] and \
            all(p is not None and p.op == "reshape" and x.shape[0] == 1 and
                p.inputs[0].shape == x.shape[1:] for p, (_, x) in zip(unit, pieces)):
        # the pieces are steps x[t] given a unit leading axis: concatenate the steps
        # themselves (no view per step) and give the result its shape
        steps = tuple(p.inputs[0] for p in unit)
        flat = (sum(v.shape[0] for v in steps),) + steps[0].shape[1:] if steps[0].shape else \
            (len(steps),)
        stacked = g.add_node("cat", steps, {"axis": 0}, flat, dtype, root.loc) \
            if steps[0].shape else None
        if stacked is not None:
            g.nodes.append(Node("reshape", (stacked,), (("shape", shape),), root.out, root.loc))
            return
    parts, at = [], 0

    def zeros(length: int) -> Value:
        filler = shape[:axis] + (length,) + shape[axis + 1:]
        zero = 0.0 if dtype.is_floating_point else 0
        return g.add_node("full", (), {"dtype": dtype, "shape": filler, "value": zero}, filler,
                          dtype, root.loc)
    for off, x in pieces:
        if off > at:
            parts.append(zeros(off - at))
        parts.append(x)
        at = off + x.shape[axis]
    if at < shape[axis]:
        parts.append(zeros(shape[axis] - at))
    g.nodes.append(Node("cat", tuple(parts), (("axis", axis),), root.out, root.loc))


__all__ = ["concatenate_padded_sums"]
