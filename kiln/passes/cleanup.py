"""Cleanup rewrites: dead-code elimination, CSE, constant folding and algebraic simplification.

Each pass is a pure function `Graph -> Graph`: it never changes its argument, keeps every
invariant `Graph.verify()` checks and keeps the interpreter's results. `optimize` runs them to
a fixed point and records how many nodes each application left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.ops import CHECKING_OPS, CREATION, ELEMENTWISE, PRIMITIVES, RANDOM

# Folding materializes a constant in the graph; beyond this many elements it costs more memory
# (and graph size) than it saves work.
FOLD_LIMIT = 4096


# ----------------------------------------------------------------------------- rebuilding

def copy_graph(graph: Graph, nodes: list | None = None) -> Graph:
    """A new Graph sharing `graph`'s Values, with its own lists (and `nodes` when given)."""
    g = Graph(graph.name)
    g.inputs = list(graph.inputs)
    g.input_kinds = list(graph.input_kinds)
    g.constants = dict(graph.constants)
    g.nodes = list(graph.nodes if nodes is None else nodes)
    g.outputs = list(graph.outputs)
    g.mutations = list(graph.mutations)
    g._next_id = graph._next_id
    return g


def _substitute(graph: Graph, replace: dict) -> Graph:
    """Read `replace[v]` wherever a node, an output or a write-back read `v`.

    Replacements have the same shape and dtype as what they replace, so every node keeps its
    type; chains (a -> b -> c) resolve to the end.
    """
    def find(v):
        while isinstance(v, Value) and v in replace:
            v = replace[v]
        return v
    nodes = []
    for n in graph.nodes:
        if n.out in replace:
            continue
        ins = tuple(find(v) for v in n.inputs)
        nodes.append(n if ins == n.inputs else Node(n.op, ins, n.attrs, n.out, n.loc, n.scope))
    g = copy_graph(graph, nodes)
    g.outputs = [find(v) for v in graph.outputs]
    g.mutations = [(src, find(new)) for src, new in graph.mutations]
    return g


# ----------------------------------------------------------------------------- dce

def dce(graph: Graph) -> Graph:
    """Drop nodes and constants nothing live reads; outputs, write-backs and checks (a bounds
    or value check raises where eager code raises, whether or not its output is read) are
    live."""
    live = set(graph.outputs) | {new for _, new in graph.mutations}
    kept = []
    for n in reversed(graph.nodes):
        if n.out in live or n.op in CHECKING_OPS:
            kept.append(n)
            live.update(n.value_inputs)
    g = copy_graph(graph, kept[::-1])
    g.constants = {v: a for v, a in graph.constants.items() if v in live}
    return g


# ----------------------------------------------------------------------------- cse

def _literal_key(x):
    # 1, 1.0 and True are equal in Python but differ in dtype promotion, so the type is part
    # of the key
    return ("lit", type(x).__name__, x)


def cse(graph: Graph) -> Graph:
    """Merge nodes computing the same op on the same inputs with the same attributes.

    Random ops are never merged: two draws are two draws, even from one seed input.
    """
    seen: dict = {}
    replace: dict = {}

    def find(v):
        return replace.get(v, v) if isinstance(v, Value) else v
    for n in graph.nodes:
        if n.prim.kind == RANDOM:
            continue
        ins = tuple(find(v) for v in n.inputs)
        key = (n.op, tuple(("v", id(v)) if isinstance(v, Value) else _literal_key(v)
                           for v in ins), n.attrs, n.out.dtype)
        try:
            hit = seen.get(key)
        except TypeError:                # an attribute holding something unhashable
            continue
        if hit is not None and hit.shape == n.out.shape:
            replace[n.out] = hit
        else:
            seen[key] = n.out
    return _substitute(graph, replace) if replace else copy_graph(graph)


# ----------------------------------------------------------------------------- folding

def fold_constants(graph: Graph, limit: int = FOLD_LIMIT) -> Graph:
    """Evaluate nodes whose inputs are all constants or literals into small constants.

    `full` and `arange` count as constants (they read nothing) but stay nodes themselves: a
    creation node costs no memory, a folded constant does.
    """
    known: dict = dict(graph.constants)
    g = copy_graph(graph, [])
    folded = 0
    for n in graph.nodes:
        values = n.value_inputs
        kind = n.prim.kind
        if kind == RANDOM or not all(v in known for v in values):
            g.nodes.append(n)
            continue
        small = math.prod(n.out.shape) <= limit and \
            all(math.prod(v.shape) <= 16 * limit for v in values)
        if kind == CREATION:
            if math.prod(n.out.shape) <= 16 * limit:
                known[n.out] = _evaluate(n, known)
            g.nodes.append(n)
            continue
        if not small:
            g.nodes.append(n)
            continue
        try:
            array = _evaluate(n, known)
        except Exception:       # e.g. an index out of range: leave it to fail at run time
            g.nodes.append(n)
            continue
        known[n.out] = array
        folded += 1
        flat = array.reshape(-1)
        if flat.size > 1 and (flat == flat[0]).all():
            # a uniform result stays a `full`: no buffer, and it fuses into its consumers
            attrs = (("dtype", n.out.dtype), ("shape", n.out.shape), ("value", flat[0].item()))
            g.nodes.append(Node("full", (), attrs, n.out, n.loc, n.scope))
        else:
            g.constants[n.out] = array
    if not folded:
        return copy_graph(graph)
    # constants are defined before every node, so a folded Value stays defined before its
    # readers; the nodes that only fed the folded ones are now dead
    return dce(g)


def _evaluate(n: Node, known: dict) -> np.ndarray:
    args = [known[v] if isinstance(v, Value) else v for v in n.inputs]
    with np.errstate(all="ignore"):
        out = np.asarray(n.prim.impl(np, *args, **n.attr_dict))
    return np.array(out.astype(n.out.dtype.np, copy=False).reshape(n.out.shape))


# ----------------------------------------------------------------------------- simplify

def _is_literal(x, value) -> bool:
    return not isinstance(x, Value) and not isinstance(x, bool) and x == value


def _identity_of(n: Node, producers: dict):
    """The Value `n` computes unchanged (same shape and dtype), or None."""
    ins, attrs, out = n.inputs, n.attr_dict, n.out

    def same(v):
        return isinstance(v, Value) and v.shape == out.shape and v.dtype is out.dtype
    op = n.op
    if op in ("mul", "add", "sub", "div") and len(ins) == 2:
        a, b = ins
        unit = {"mul": 1, "div": 1, "add": 0, "sub": 0}[op]
        if same(a) and _is_literal(b, unit) and not (op == "add" and a.dtype.is_floating_point):
            return a
        if op == "sub" and same(a) and _is_literal(b, 0):
            return a
        if op == "add" and same(a) and _is_literal(b, 0):
            return None     # float x + 0 turns -0.0 into +0.0: not an identity
        if op == "mul" and same(b) and _is_literal(a, 1):
            return b
    if op == "neg":
        inner = producers.get(ins[0])
        if inner is not None and inner.op == "neg" and same(inner.inputs[0]):
            return inner.inputs[0]
    if op in ("reshape", "expand") and same(ins[0]):
        return ins[0]
    if op == "permute" and tuple(attrs["perm"]) == tuple(range(len(out.shape))) and same(ins[0]):
        return ins[0]
    if op == "pow" and same(ins[0]) and _is_literal(ins[1], 1):
        return ins[0]
    if op == "cast" and same(ins[0]):
        return ins[0]
    if op == "slice" and same(ins[0]) and all(s == 1 for s in attrs["steps"]):
        return ins[0]
    if op == "pad" and same(ins[0]) and all(lo == 0 and hi == 0 for lo, hi in attrs["pads"]):
        return ins[0]
    if op == "flip" and not attrs["axes"] and same(ins[0]):
        return ins[0]
    return None


def _infer_ok(op: str, inputs: tuple, attrs: dict, out: Value) -> bool:
    shapes = tuple(v.shape if isinstance(v, Value) else () for v in inputs)
    dtypes = tuple(v.dtype if isinstance(v, Value) else None for v in inputs)
    try:
        shape, dtype = PRIMITIVES[op].infer(shapes, dtypes, **attrs)
    except Exception:
        return False
    return tuple(shape) == out.shape and dtype is out.dtype


def simplify(graph: Graph) -> Graph:
    """Algebraic identities and view chains.

    x*1, x/1, x-0, --x, identity reshape/permute/expand/cast/slice/pad -> x;
    reshape(reshape(x)) -> reshape(x); permute(permute(x)) -> one permute; an `expand` feeding
    an op that broadcasts implicitly is dropped; integer x - x -> zeros.
    """
    producers: dict = {}
    replace: dict = {}
    nodes = []

    def find(v):
        while isinstance(v, Value) and v in replace:
            v = replace[v]
        return v
    for n in graph.nodes:
        ins = tuple(find(v) for v in n.inputs)
        n = n if ins == n.inputs else Node(n.op, ins, n.attrs, n.out, n.loc, n.scope)
        n = _rewrite(n, producers)
        same = _identity_of(n, producers)
        if same is not None:
            replace[n.out] = same
            continue
        producers[n.out] = n
        nodes.append(n)
    g = copy_graph(graph, nodes)
    g.outputs = [find(v) for v in graph.outputs]
    g.mutations = [(src, find(new)) for src, new in graph.mutations]
    return dce(g) if replace or len(nodes) != len(graph.nodes) else g


def _rewrite(n: Node, producers: dict) -> Node:
    """`n` with a producer chain collapsed into it (same output Value), or `n` unchanged."""
    attrs = n.attr_dict
    first = n.inputs[0] if n.inputs else None
    inner = producers.get(first) if isinstance(first, Value) else None
    if n.op == "reshape" and inner is not None and inner.op == "reshape":
        return Node("reshape", (inner.inputs[0],), n.attrs, n.out, n.loc, n.scope)
    if n.op == "permute" and inner is not None and inner.op == "permute":
        p1, p2 = inner.attr_dict["perm"], attrs["perm"]
        perm = tuple(p1[i] for i in p2)
        return Node("permute", (inner.inputs[0],), (("perm", perm),), n.out, n.loc, n.scope)
    if n.op == "expand" and inner is not None and inner.op == "expand":
        return Node("expand", (inner.inputs[0],), n.attrs, n.out, n.loc, n.scope)
    if n.prim.kind == ELEMENTWISE and len(n.inputs) >= 2:
        # an elementwise op broadcasts by itself: reading expand(x) is reading x
        ins = list(n.inputs)
        changed = False
        for i, v in enumerate(ins):
            p = producers.get(v) if isinstance(v, Value) else None
            if p is None or p.op != "expand":
                continue
            trial = ins[:i] + [p.inputs[0]] + ins[i + 1:]
            if _infer_ok(n.op, tuple(trial), attrs, n.out):
                ins, changed = trial, True
        if changed:
            return Node(n.op, tuple(ins), n.attrs, n.out, n.loc, n.scope)
    if n.op == "sub" and len(n.inputs) == 2 and n.inputs[0] is n.inputs[1] and \
            n.out.dtype in _INTEGER:
        # x - x is 0 only where x is finite, so only integers qualify
        return Node("full", (), (("dtype", n.out.dtype), ("shape", n.out.shape), ("value", 0)),
                    n.out, n.loc, n.scope)
    return n


_INTEGER = tuple(d for d in (getattr(dt, name, None) for name in
                             ("int8", "int16", "int32", "int64", "uint8")) if d is not None)


# ----------------------------------------------------------------------------- pipeline

@dataclass(frozen=True)
class PassStat:
    """One application of one pass: how many nodes it found and left."""

    name: str
    nodes_before: int
    nodes_after: int

    def __str__(self) -> str:
        return f"{self.name:<16} {self.nodes_before:>5} -> {self.nodes_after:<5}"


CLEANUP_PASSES: tuple = (("simplify", simplify), ("fold_constants", fold_constants),
                         ("cse", cse), ("dce", dce))


def optimize(graph: Graph, passes: tuple = CLEANUP_PASSES, max_rounds: int = 4,
             ) -> tuple[Graph, list[PassStat]]:
    """Run `passes` in order, repeated until a round changes nothing (at most `max_rounds`).

    Returns:
        (optimized graph, one PassStat per pass application).
    """
    stats: list[PassStat] = []
    for _ in range(max_rounds):
        before_round = graph.structure()
        for name, fn in passes:
            before = len(graph.nodes)
            graph = fn(graph)
            stats.append(PassStat(name, before, len(graph.nodes)))
        if graph.structure() == before_round:
            break
    return graph, stats

