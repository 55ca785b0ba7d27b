"""The IR graph: SSA values and nodes, a readable listing, invariants, JSON, networkx and DOT.

A `Graph` holds ordered `Node`s over `Value`s. Its inputs are the function's tensor arguments,
then lifted tensors (parameters, buffers, optimizer state, closed-over tensors) and random
seeds; constants are arrays baked into the graph. `mutations` say which inputs the program
writes back (in-place updates, recorded functionally): after a run, input `v` holds `new`.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.dtypes import DType
from kiln.ir.ops import PRIMITIVES, ShapeError
from kiln.ir.printer import format_call, format_nodes, kernel_name  # noqa: F401  (re-exported)

INPUT_KINDS = ("arg", "lifted", "grad", "seed", "scalar", "number")


class Deferred:
    """A dataclass some of whose fields may be filled on first read (`defer`), not when built.

    A warm process reads compiled programs from disk and needs only a little of each (a graph's
    inputs and outputs, not its nodes); the rest is decoded the first time anything reads it
    (`kiln dump`, `explain`, a pass), and from then on it is an ordinary attribute.
    """

    def defer(self, name: str, make) -> None:
        """Leave field `name` unset until it is first read, then set it to `make()` (which
        should return the same object every time: a shallow copy made before calls it too)."""
        del self.__dict__[name]
        self.__dict__.setdefault("_deferred", {})[name] = make

    def __getattr__(self, name: str):
        # only reached when normal lookup fails: a deferred field, or a missing attribute
        own = self.__dict__
        later = own.get("_deferred")
        if later is None or name not in later:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        with _DEFERRED_LOCK:               # one decode, even when threads race for it
            if name not in own:
                own[name] = later[name]()
        return own[name]

    def __getstate__(self) -> dict:
        # copies and pickles get every field decoded (a decoder does not pickle)
        for name in list(self.__dict__.get("_deferred", ())):
            getattr(self, name)
        return {k: v for k, v in self.__dict__.items() if k != "_deferred"}


_DEFERRED_LOCK = threading.RLock()


@dataclass(eq=False)
class Value:
    """One SSA value: a tensor of a static shape and dtype, defined exactly once."""

    id: int
    shape: tuple
    dtype: DType
    name: str = ""

    @property
    def ref(self) -> str:
        return f"%{self.name or self.id}"

    @property
    def type_str(self) -> str:
        return f"{self.dtype.short}[{','.join(map(str, self.shape))}]"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"{self.ref}: {self.type_str}"


@dataclass(eq=False)
class Node:
    """`out = op(inputs, **attrs)`; inputs are Values or Python-number literals."""

    op: str
    inputs: tuple
    attrs: tuple            # sorted (name, value) pairs: hashable
    out: Value
    loc: str = ""
    scope: tuple = ()       # provenance: the composites (or "grad of %N op") it was traced in

    @property
    def attr_dict(self) -> dict:
        return dict(self.attrs)

    @property
    def prim(self):
        return PRIMITIVES[self.op]

    @property
    def value_inputs(self) -> list:
        return [v for v in self.inputs if isinstance(v, Value)]


@dataclass(eq=False)
class Graph(Deferred):
    name: str = "graph"
    inputs: list = field(default_factory=list)          # Values
    input_kinds: list = field(default_factory=list)     # "arg" | "lifted" | "grad" | "seed" | "scalar" | "number", per input
    constants: dict = field(default_factory=dict)       # Value -> np.ndarray
    nodes: list = field(default_factory=list)
    outputs: list = field(default_factory=list)         # Values
    mutations: list = field(default_factory=list)       # (input Value, new Value)
    _next_id: int = 0

    # ------------------------------------------------------------------ building
    def new_value(self, shape: tuple, dtype: DType, name: str = "") -> Value:
        v = Value(self._next_id, tuple(shape), dtype, name)
        self._next_id += 1
        return v

    def add_input(self, shape, dtype, name: str = "", kind: str = "arg") -> Value:
        v = self.new_value(shape, dtype, name)
        self.inputs.append(v)
        self.input_kinds.append(kind)
        return v

    def add_constant(self, array: np.ndarray, dtype: DType) -> Value:
        v = self.new_value(array.shape, dtype, f"c{len(self.constants)}")
        self.constants[v] = array
        return v

    def add_node(self, op: str, inputs: tuple, attrs: dict, shape, dtype, loc: str = "",
                 scope: tuple = ()) -> Value:
        out = self.new_value(shape, dtype)
        self.nodes.append(Node(op, tuple(inputs), tuple(sorted(attrs.items())) if attrs else (),
                               out, loc, scope))
        return out

    def producers(self) -> dict:
        """Value -> the Node defining it (inputs and constants have none)."""
        return {n.out: n for n in self.nodes}

    def users(self) -> dict:
        """Value -> the Nodes reading it, in program order."""
        out: dict = {}
        for n in self.nodes:
            for v in n.value_inputs:
                out.setdefault(v, []).append(n)
        return out

    # ------------------------------------------------------------------ invariants
    def verify(self) -> None:
        """Check every invariant; raise `IRError` naming the first broken one."""
        defined: set = set()
        if len(self.inputs) != len(self.input_kinds):
            raise IRError(f"{len(self.inputs)} inputs but {len(self.input_kinds)} input kinds")
        for v, kind in zip(self.inputs, self.input_kinds):
            if kind not in INPUT_KINDS:
                raise IRError(f"input {v.ref} has unknown kind {kind!r}")
            self._define(v, defined)
        for v, array in self.constants.items():
            if tuple(array.shape) != v.shape or dt.from_numpy(array.dtype) is not v.dtype:
                raise IRError(f"constant {v.ref} holds {array.dtype}{list(array.shape)}, "
                              f"declared {v.type_str}")
            self._define(v, defined)
        for n in self.nodes:
            if n.op not in PRIMITIVES:
                raise IRError(f"node {n.out.ref} uses unknown op {n.op!r}")
            prim = PRIMITIVES[n.op]
            if prim.arity is not None and len(n.inputs) != prim.arity:
                raise IRError(f"{n.op} takes {prim.arity} inputs, node {n.out.ref} has "
                              f"{len(n.inputs)}")
            for v in n.inputs:
                if isinstance(v, Value):
                    if v not in defined:
                        raise IRError(f"node {n.out.ref} = {n.op} reads {v.ref} before it is "
                                      "defined")
                elif not isinstance(v, (bool, int, float)):
                    raise IRError(f"node {n.out.ref} has a non-literal, non-Value input {v!r}")
            try:
                hash(n.attrs)
            except TypeError:
                raise IRError(f"node {n.out.ref} has unhashable attributes {n.attrs}") from None
            shapes = tuple(v.shape if isinstance(v, Value) else () for v in n.inputs)
            dtypes = tuple(v.dtype if isinstance(v, Value) else None for v in n.inputs)
            try:
                shape, dtype = prim.infer(shapes, dtypes, **n.attr_dict)
            except ShapeError as e:
                raise IRError(f"node {n.out.ref} = {n.op}: {e}") from None
            if tuple(shape) != n.out.shape or dtype is not n.out.dtype:
                raise IRError(f"node {n.out.ref} = {n.op} declares {n.out.type_str}, its rule "
                              f"gives {dtype.short}[{','.join(map(str, shape))}]")
            self._define(n.out, defined)
        for v in self.outputs:
            if v not in defined:
                raise IRError(f"output {v.ref} is not defined in the graph")
        inputs = set(self.inputs)
        for src, new in self.mutations:
            if src not in inputs:
                raise IRError(f"mutation writes {src.ref}, which is not a graph input")
            if new not in defined:
                raise IRError(f"mutation value {new.ref} is not defined")
            if src.shape != new.shape or src.dtype is not new.dtype:
                raise IRError(f"mutation of {src.ref} ({src.type_str}) with {new.ref} "
                              f"({new.type_str}) changes its type")

    @staticmethod
    def _define(v: Value, defined: set) -> None:
        if v in defined:
            raise IRError(f"value {v.ref} is defined twice (SSA)")
        defined.add(v)

    # ------------------------------------------------------------------ printing
    def __str__(self) -> str:
        args = ", ".join(f"{v.ref}: {v.type_str}" + ("" if k == "arg" else f" [{k}]")
                         for v, k in zip(self.inputs, self.input_kinds))
        lines = [f"graph {self.name}({args})"]
        for v, array in self.constants.items():
            lines.append(f"  {v.ref}: {v.type_str} = constant {_preview(array)}")
        lines += format_nodes(self.nodes)
        lines.append("  return (" + ", ".join(v.ref for v in self.outputs) + ")")
        for src, new in self.mutations:
            lines.append(f"  write {new.ref} -> {src.ref}")
        return "\n".join(lines)

    def summary(self) -> str:
        return (f"{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, "
                f"{len(self.outputs)} outputs, {len(self.mutations)} write-backs")

    # ------------------------------------------------------------------ analysis views
    def to_networkx(self):
        """A networkx DiGraph: one vertex per Value (attribute `node` for computed ones)."""
        import networkx as nx
        g = nx.DiGraph()
        for v, kind in zip(self.inputs, self.input_kinds):
            g.add_node(v, kind=kind, label=v.ref)
        for v in self.constants:
            g.add_node(v, kind="constant", label=v.ref)
        for n in self.nodes:
            g.add_node(n.out, kind="node", node=n, label=f"{n.out.ref} {n.op}")
            for v in n.value_inputs:
                g.add_edge(v, n.out)
        return g

    def to_dot(self, groups: dict | None = None) -> str:
        """Graphviz DOT text; `groups` maps a Value to a group index, drawn as a colour."""
        palette = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462",
                   "#b3de69", "#fccde5", "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f"]
        lines = [f'digraph "{self.name}" {{', "  rankdir=TB;",
                 '  node [shape=box, style="rounded,filled", fontname="monospace", '
                 'fontsize=10, fillcolor="#ffffff"];']
        for v, kind in zip(self.inputs, self.input_kinds):
            lines.append(f'  v{v.id} [label="{v.ref}\\n{v.type_str}\\n({kind})", '
                         'shape=ellipse, fillcolor="#e8e8e8"];')
        for v in self.constants:
            lines.append(f'  v{v.id} [label="{v.ref}\\n{v.type_str}\\nconstant", '
                         'shape=ellipse, fillcolor="#f4f4f4"];')
        outs = set(self.outputs)
        for n in self.nodes:
            colour = palette[groups[n.out] % len(palette)] if groups and n.out in groups \
                else "#ffffff"
            border = ", penwidth=2" if n.out in outs else ""
            lit = [str(v) for v in n.inputs if not isinstance(v, Value)]
            extra = f"\\n{', '.join(lit)}" if lit else ""
            lines.append(f'  v{n.out.id} [label="{n.out.ref} = {n.op}{extra}\\n'
                         f'{n.out.type_str}", fillcolor="{colour}"{border}];')
            for v in n.value_inputs:
                lines.append(f"  v{v.id} -> v{n.out.id};")
        for src, new in self.mutations:
            lines.append(f'  v{new.id} -> v{src.id} [style=dashed, label="write"];')
        lines.append("}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        return json.dumps(self.to_doc(), indent=1)

    def to_doc(self) -> dict:
        """The graph as plain JSON data: what `to_json` writes, `from_doc` reads."""
        index = {}
        for v in self.inputs:
            index[v] = len(index)
        for v in self.constants:
            index[v] = len(index)
        for n in self.nodes:
            index[n.out] = len(index)

        def val(v):
            return {"v": index[v]} if isinstance(v, Value) else to_json_value(v)
        doc = {
            "name": self.name,
            "inputs": [[_value_json(v), k] for v, k in zip(self.inputs, self.input_kinds)],
            # a constant's bytes, base64: exact (nan, inf, -0.0) and cheap to read back
            "constants": [[_value_json(v), base64.b64encode(np.ascontiguousarray(a)).decode(),
                           a.dtype.str] for v, a in self.constants.items()],
            "nodes": [{"op": n.op, "inputs": [val(v) for v in n.inputs],
                       "attrs": [[k, to_json_value(a)] for k, a in n.attrs],
                       "out": _value_json(n.out), "loc": n.loc,
                       **({"scope": list(n.scope)} if n.scope else {})} for n in self.nodes],
            "outputs": [index[v] for v in self.outputs],
            "mutations": [[index[a], index[b]] for a, b in self.mutations],
        }
        return doc

    @classmethod
    def from_json(cls, text: str) -> "Graph":
        return cls.from_doc(json.loads(text))

    @staticmethod
    def doc_without_nodes(doc: dict) -> dict:
        """`doc` (a `to_doc`) less its nodes, with what decoding the rest needs of them: the
        values the outputs and write-backs name, and the next free value id. `from_doc` reads
        it with the nodes given apart, to be decoded when first read."""
        head = {k: v for k, v in doc.items() if k != "nodes"}
        first = len(doc["inputs"]) + len(doc["constants"])
        named = set(doc["outputs"]) | {i for pair in doc["mutations"] for i in pair}
        head["defined"] = [[i, doc["nodes"][i - first]["out"]] for i in sorted(named)
                           if i >= first]
        ids = [spec["id"] for spec, *_ in doc["inputs"] + doc["constants"]] + \
            [nd["out"]["id"] for nd in doc["nodes"]]
        head["next_id"] = max(ids, default=-1) + 1
        return head

    @classmethod
    def from_doc(cls, doc: dict, nodes=None) -> "Graph":
        """The graph `doc` describes: a `to_doc`, or a `doc_without_nodes` with `nodes`, a
        function returning that doc's nodes (called, once, when the nodes are first read)."""
        g = cls(doc["name"])
        values = []
        value = Value

        def make(spec):
            v = value(spec["id"], tuple(spec["shape"]), dt.from_name(spec["dtype"]),
                      spec["name"])
            values.append(v)
            return v
        for spec, kind in doc["inputs"]:
            g.inputs.append(make(spec))
            g.input_kinds.append(kind)
        for spec, data, np_dtype in doc["constants"]:
            v = make(spec)
            g.constants[v] = np.frombuffer(base64.b64decode(data, validate=True),
                                           np.dtype(np_dtype)).reshape(v.shape).copy()
        if nodes is None:
            _decode_nodes(g, doc["nodes"], values, {})
            g._next_id = max((v.id + 1 for v in values), default=0)
        else:
            before = list(values)       # the Values defined before the nodes
            first = len(values)
            known = {i: value(spec["id"], tuple(spec["shape"]), dt.from_name(spec["dtype"]),
                              spec["name"]) for i, spec in doc["defined"]}
            found = values + [known.get(i) for i in range(first, max(known, default=-1) + 1)]
            g._next_id = doc["next_id"]
            done: list = []

            def decode():
                if not done:        # once: a shallow copy of `g` must see the same nodes
                    done.append(_decode_nodes(Graph(), nodes(), list(before), known))
                return done[0].nodes
            values = found          # what the outputs and write-backs point to
            g.defer("nodes", decode)
        g.outputs = [values[i] for i in doc["outputs"]]
        g.mutations = [(values[a], values[b]) for a, b in doc["mutations"]]
        return g

    def structure(self) -> tuple:
        """A hashable description independent of value ids: equal for equal programs."""
        index = {v: i for i, v in enumerate(list(self.inputs) + list(self.constants) +
                                            [n.out for n in self.nodes])}

        def ref(v):
            return ("v", index[v]) if isinstance(v, Value) else ("lit", type(v).__name__, v)
        return (
            tuple((v.shape, v.dtype.name, k) for v, k in zip(self.inputs, self.input_kinds)),
            tuple((v.shape, v.dtype.name, a.tobytes()) for v, a in self.constants.items()),
            tuple((n.op, tuple(ref(v) for v in n.inputs), n.attrs, n.out.shape,
                   n.out.dtype.name) for n in self.nodes),
            tuple(index[v] for v in self.outputs),
            tuple((index[a], index[b]) for a, b in self.mutations),
        )


class IRError(Exception):
    """A graph breaks an IR invariant (a compiler bug, never a user error)."""


# ----------------------------------------------------------------------------- helpers

def _decode_nodes(g: Graph, docs: list, values: list, known: dict) -> Graph:
    """Append the nodes `docs` describe to `g`; `values` are the Values defined before them
    (appended to), `known` those of their outputs that exist already, by index."""
    append, nodes = values.append, g.nodes
    for nd in docs:
        ins = tuple(values[x["v"]] if type(x) is dict and "v" in x else
                    from_json_value(x) for x in nd["inputs"])
        attrs = tuple((k, from_json_value(a)) for k, a in nd["attrs"])
        out = known.get(len(values))
        if out is None:
            spec = nd["out"]
            out = Value(spec["id"], tuple(spec["shape"]), dt.from_name(spec["dtype"]),
                        spec["name"])
        append(out)
        nodes.append(Node(nd["op"], ins, attrs, out, nd["loc"], tuple(nd.get("scope", ()))))
    return g


def _value_json(v: Value) -> dict:
    return {"id": v.id, "shape": list(v.shape), "dtype": v.dtype.name, "name": v.name}


def to_json_value(x):
    """JSON-encode literals and attributes exactly (tuples, dtypes, inf and nan survive)."""
    if isinstance(x, DType):
        return {"dtype": x.name}
    if isinstance(x, tuple):
        return {"tuple": [to_json_value(v) for v in x]}
    if isinstance(x, list):
        return [to_json_value(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return {"float": repr(x)}
    if isinstance(x, float):
        return {"f": x}              # keeps 1.0 a float after the round trip
    return x


def from_json_value(x):
    """The literal or attribute `to_json_value` encoded as `x`."""
    if isinstance(x, dict):
        if "dtype" in x:
            return dt.from_name(x["dtype"])
        if "tuple" in x:
            return tuple(from_json_value(v) for v in x["tuple"])
        if "float" in x:
            return float(x["float"])
        if "f" in x:
            return float(x["f"])
    if isinstance(x, list):
        return [from_json_value(v) for v in x]
    return x


def _preview(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    if flat.size <= 6:
        return np.array2string(array, separator=",", threshold=6).replace("\n", "")
    return f"[{', '.join(str(x) for x in flat[:4].tolist())}, ... ({flat.size} values)]"
