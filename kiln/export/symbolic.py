"""Sizes written in terms of named symbols (`batch`), and graphs made concrete for their values.

A dynamic dimension is a symbol. Every integer the traced graph derived from it (a reshape's
target shape, a `full`'s shape, a literal count) is stored as an `Affine`: `offset + sum of
coefficient * symbol`. `concretize` substitutes values for the symbols and re-derives every
node's shape and dtype through its op's own shape rule, so a graph is only ever run at shapes
the rules accept.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.graph import Graph, Value, from_json_value, to_json_value
from kiln.ir.ops import PRIMITIVES, ShapeError


@dataclass(frozen=True)
class Affine:
    """`offset + sum(coefficient * symbol)`: a size the trace derived from dynamic sizes."""

    terms: tuple            # ((symbol, coefficient), ...), sorted, no zero coefficients
    offset: float = 0

    def value(self, sizes: dict):
        return self.offset + sum(c * sizes[s] for s, c in self.terms)

    def __str__(self) -> str:
        parts = [s if c == 1 else f"{c}*{s}" for s, c in self.terms]
        if self.offset or not parts:
            parts.append(str(self.offset))
        return " + ".join(parts)

    def to_json(self) -> dict:
        return {"affine": [[s, c] for s, c in self.terms], "offset": self.offset}

    @staticmethod
    def from_json(doc: dict) -> "Affine":
        return Affine(tuple((str(s), c) for s, c in doc["affine"]), doc["offset"])


def substitute(x, sizes: dict):
    """`x` (a literal, an attribute, nested tuples of them) with each Affine given its value."""
    if isinstance(x, Affine):
        return x.value(sizes)       # an int when the Affine's numbers are ints
    if isinstance(x, tuple):
        return tuple(substitute(v, sizes) for v in x)
    return x


def has_symbol(x) -> bool:
    if isinstance(x, Affine):
        return True
    if isinstance(x, tuple):
        return any(has_symbol(v) for v in x)
    return False


def templates_to_json(templates: dict) -> list:
    """{node index: (inputs, attrs)} with Affines inside, as JSON data."""
    return [[i, [_enc(v) for v in ins], [[k, _enc(a)] for k, a in attrs]]
            for i, (ins, attrs) in sorted(templates.items())]


def templates_from_json(doc: list) -> dict:
    return {int(i): (tuple(_dec(v) for v in ins), tuple((k, _dec(a)) for k, a in attrs))
            for i, ins, attrs in doc}


def _enc(x):
    if isinstance(x, Affine):
        return x.to_json()
    if isinstance(x, tuple):
        return {"tuple": [_enc(v) for v in x]}
    if x is None:
        return {"value": True}      # a Value input of the node: taken from the graph
    return to_json_value(x)


def _dec(x):
    if isinstance(x, dict) and "affine" in x:
        return Affine.from_json(x)
    if isinstance(x, dict) and "value" in x:
        return None
    if isinstance(x, dict) and "tuple" in x:
        return tuple(_dec(v) for v in x["tuple"])
    return from_json_value(x)


def concretize(graph: Graph, templates: dict, input_shapes: list, sizes: dict) -> Graph:
    """`graph` at new sizes: inputs of `input_shapes`, each templated node's Affine inputs and
    attributes given their values from `sizes`, every shape re-derived by the ops' rules.

    Raises:
        ValueError: a node's rule rejects the new shapes, naming the node and its line.
    """
    g = Graph(graph.name)
    new: dict = {}
    for v, kind, shape in zip(graph.inputs, graph.input_kinds, input_shapes):
        new[v] = g.add_input(tuple(shape), v.dtype, v.name, kind)
    for v, array in graph.constants.items():
        new[v] = g.add_constant(array, v.dtype)
    for i, n in enumerate(graph.nodes):
        ins, attrs = n.inputs, n.attrs
        if i in templates:
            t_ins, t_attrs = templates[i]
            ins = tuple(v if t is None else substitute(t, sizes) for v, t in zip(ins, t_ins))
            attrs = tuple((k, substitute(a, sizes)) for k, a in t_attrs)
        ins = tuple(new[v] if isinstance(v, Value) else v for v in ins)
        shapes = tuple(v.shape if isinstance(v, Value) else () for v in ins)
        dtypes = tuple(v.dtype if isinstance(v, Value) else None for v in ins)
        try:
            shape, dtype = PRIMITIVES[n.op].infer(shapes, dtypes, **dict(attrs))
        except ShapeError as e:
            sizes_text = ", ".join(f"{k}={v}" for k, v in sizes.items())
            raise ValueError(f"kiln.export: at {sizes_text}, node {n.out.ref} = {n.op} (from "
                             f"{n.loc}) rejects its inputs: {e}") from None
        new[n.out] = g.add_node(n.op, ins, dict(attrs), shape, dtype, n.loc, n.scope)
    g.outputs = [new[v] for v in graph.outputs]
    return g
