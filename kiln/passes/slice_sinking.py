"""Sinking slices: an elementwise result read only in disjoint pieces is computed piece by piece.

An LSTM step computes its four gates' pre-activations as one `(batch, 4*hidden)` sum and
reads it back in four `hidden`-wide slices (`chunk`); a GRU, attention's packed q/k/v
projection do the same. Computed whole, the sum is its own kernel (its iteration space is four
times the gates'), writing a buffer the gate kernel then reads. Since slicing commutes with
elementwise ops,

    slice(f(a, b)) == f(slice(a), slice(b))      (a broadcast input sliced only where it varies)

each slice can take the elementwise op with it: the gate math then reads slices of the op's
inputs, which are views of buffers (index arithmetic in the kernel that reads them), and the
whole step fuses into one kernel. A reshape that only adds or drops axes of size 1 (an RNN
step's `x[t]`) passes slices through the same way. Only done when the slices are pairwise
disjoint, so no element is computed twice; repeated until no slice reads an elementwise result
so.
"""

from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.ir.ops import ELEMENTWISE, PRIMITIVES
from kiln.passes.cleanup import copy_graph, dce

MAX_ROUNDS = 8


def sink_slices(graph: Graph) -> Graph:
    """Rewrite `slice(f(x, ...))` into `f(slice(x), ...)` for every elementwise `f` whose result
    is read only by pairwise disjoint slices and does not leave the graph.

    Returns a new graph (or `graph` itself when nothing matched); each slice's output Value
    keeps its identity, now computed by the elementwise op.
    """
    for _ in range(MAX_ROUNDS):
        rewritten = _sink_once(graph)
        if rewritten is graph:
            break
        graph = rewritten
    return graph


def _sink_once(graph: Graph) -> Graph:
    producers = graph.producers()
    users = graph.users()
    leaving = set(graph.outputs) | {new for _, new in graph.mutations}
    sinkable: set = set()       # elementwise or unit reshape nodes their slices take along
    for n in graph.nodes:
        if (n.prim.kind != ELEMENTWISE and not _unit_reshape(n)) or n.out in leaving:
            continue
        readers = users.get(n.out, [])
        if readers and all(r.op == "slice" for r in readers) and _disjoint(readers):
            sinkable.add(n)
    if not sinkable:
        return graph

    g = copy_graph(graph, [])
    changed = False
    for n in graph.nodes:
        source = producers.get(n.inputs[0]) if n.op == "slice" else None
        if source in sinkable:
            sunk = _sliced_reshape(g, source, n) if source.op == "reshape" else \
                _sliced_op(g, source, n)
            if sunk is not None:
                g.nodes.append(sunk)
                changed = True
                continue
        g.nodes.append(n)
    return dce(g) if changed else graph


def _box(s: Node) -> list:
    a = s.attr_dict
    return list(zip(a["starts"], a["stops"]))


def _disjoint(slices: list) -> bool:
    """Whether no two of `slices` (of one value) share an element: for every pair, some axis
    where their [start, stop) ranges do not overlap."""
    boxes = [_box(s) for s in slices]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if not any(hi1 <= lo2 or hi2 <= lo1 for (lo1, hi1), (lo2, hi2) in zip(a, b)):
                return False
    return True


def _unit_reshape(n: Node) -> bool:
    """A reshape that only adds or drops axes of size 1 (an RNN's step `x[t]` of a
    (1, batch, features) piece): slicing commutes with it axis for axis."""
    return n.op == "reshape" and [d for d in n.inputs[0].shape if d != 1] == \
        [d for d in n.out.shape if d != 1]


def _sliced_reshape(g: Graph, op: Node, s: Node) -> Node | None:
    """`s` (a slice of unit reshape `op`'s result) as the reshape of the same slice of its
    input (appended to `g`), or None when the slice cuts an axis of size 1."""
    box = list(zip(*(s.attr_dict[k] for k in ("starts", "stops", "steps"))))
    kept = [b for b, d in zip(box, op.out.shape) if d != 1]
    if any(b != (0, 1, 1) for b, d in zip(box, op.out.shape) if d == 1):
        return None
    it = iter(kept)
    inner = [(0, 1, 1) if d == 1 else next(it) for d in op.inputs[0].shape]
    shape = tuple(len(range(*b)) for b in inner)
    out = g.new_value(shape, s.out.dtype)
    g.nodes.append(Node("slice", (op.inputs[0],), (("starts", tuple(b[0] for b in inner)),
                                                   ("steps", tuple(b[2] for b in inner)),
                                                   ("stops", tuple(b[1] for b in inner))),
                        out, s.loc))
    return Node("reshape", (out,), (("shape", s.out.shape),), s.out, op.loc)


def _sliced_op(g: Graph, op: Node, s: Node) -> Node | None:
    """`op` computing `s`'s output from slices of its inputs (appended to `g`), or None when
    its shape rule disagrees (then the slice stays)."""
    attrs = s.attr_dict
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    full = op.out.shape
    ins = []
    for x in op.inputs:
        if not isinstance(x, Value) or x.shape == ():
            ins.append(x)
            continue
        # align x's axes with the result's from the right; a broadcast axis (size 1 where the
        # result is larger) is read whole
        offset = len(full) - len(x.shape)
        box = [(0, d, 1) if d != full[offset + i] else
               (starts[offset + i], stops[offset + i], steps[offset + i])
               for i, d in enumerate(x.shape)]
        if all(lo == 0 and hi == d and st == 1 for (lo, hi, st), d in zip(box, x.shape)):
            ins.append(x)
            continue
        shape = tuple(len(range(lo, hi, st)) for lo, hi, st in box)
        out = g.new_value(shape, x.dtype)
        g.nodes.append(Node("slice", (x,), (("starts", tuple(b[0] for b in box)),
                                            ("steps", tuple(b[2] for b in box)),
                                            ("stops", tuple(b[1] for b in box))), out, s.loc))
        ins.append(out)
    shapes = tuple(v.shape if isinstance(v, Value) else () for v in ins)
    dtypes = tuple(v.dtype if isinstance(v, Value) else None for v in ins)
    try:
        shape, dtype = PRIMITIVES[op.op].infer(shapes, dtypes, **op.attr_dict)
    except Exception:
        return None
    if tuple(shape) != s.out.shape or dtype is not s.out.dtype:
        return None
    return Node(op.op, tuple(ins), op.attrs, s.out, op.loc)


__all__ = ["sink_slices"]
