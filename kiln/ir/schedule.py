"""The fused program's data types: a Schedule of FusedKernels and ExternSteps.

`kiln.passes.fusion` makes them; `kiln.codegen.lower` lowers them to what runs; the program
cache stores them. They live in `ir` so that codegen, which imports only `ir`, can read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir.graph import Deferred, Graph, Node, Value
from kiln.ir.ops import PRIMITIVES
from kiln.ir.printer import scope_summary

# movement ops NumPy (and CuPy) compute as strided views of their input (Primitive.view)
STRIDED_VIEWS = frozenset(name for name, p in PRIMITIVES.items() if p.view)


def padded_pieces(v: Value, producers: dict, users: dict, leaving=()) -> tuple | None:
    """(axis, [(offset, piece)], tree nodes) when `v` is a sum of zero pads of pieces of one
    shape lying side by side along one axis and covering it (an LSTM's four gate gradients
    assembled into one (batch, 4 * hidden) gradient), each link of the tree read only by the
    next; else None. A kernel computing the pieces stores each at its place in `v` instead
    (`kiln.passes.fusion`, `kiln.codegen.kernel`)."""
    leaves, tree, todo = [], [], [v]
    while todo:
        x = todo.pop()
        node = producers.get(x)
        if node is None or (x is not v and (x in leaving or len(users.get(x, ())) != 1)):
            return None
        if node.op == "add" and all(isinstance(u, Value) and u.shape == v.shape and
                                    u.dtype is v.dtype for u in node.inputs):
            tree.append(node)
            todo.extend(node.inputs)
        elif node.op == "pad" and node.attr_dict["value"] == 0:
            padded = [(i, lo) for i, (lo, hi) in enumerate(node.attr_dict["pads"])
                      if lo or hi]
            if len(padded) != 1 or min(min(p) for p in node.attr_dict["pads"]) < 0:
                return None
            tree.append(node)
            leaves.append((padded[0], node.inputs[0]))
        else:
            return None
    axes = {axis for (axis, _), _ in leaves}
    shapes = {piece.shape for _, piece in leaves}
    if len(axes) != 1 or len(shapes) != 1 or not tree or tree[0].op != "add":
        return None
    (axis,), (shape,) = axes, shapes
    width = shape[axis]
    offsets = sorted(lo for (_, lo), _ in leaves)
    if offsets != list(range(0, v.shape[axis], width)) or len(offsets) * width != \
            v.shape[axis]:
        return None
    return axis, [(lo, piece) for (_, lo), piece in leaves], tree


@dataclass(eq=False)
class FusedKernel:
    """One generated kernel: `subgraph` computes `outputs` from `inputs` (outer Values)."""

    name: str
    subgraph: Graph
    inputs: list
    outputs: list
    nodes: list                  # the outer graph's nodes it computes

    def __str__(self) -> str:
        ins = ", ".join(v.ref for v in self.inputs)
        outs = ", ".join(v.ref for v in self.outputs)
        counts: dict = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        ops = " ".join(op if k == 1 else f"{op}*{k}" for op, k in counts.items())
        where = scope_summary(self.nodes)
        return f"{self.name}({ins}) -> ({outs})    [{len(self.nodes)} nodes: {ops}]" + (
            f"  from {where}" if where else "")


@dataclass(eq=False)
class ExternStep:
    """One node run as a library call (matmul, indexing, random, cat, cumsum)."""

    node: Node

    @property
    def name(self) -> str:
        return self.node.op

    @property
    def inputs(self) -> list:
        return list(dict.fromkeys(self.node.value_inputs))

    @property
    def outputs(self) -> list:
        return [self.node.out]

    @property
    def subgraph(self) -> Graph:
        """The node alone as a graph over its own inputs (built afresh), like a FusedKernel's."""
        g = Graph(self.node.op)
        inner = {v: g.add_input(v.shape, v.dtype, v.name) for v in self.inputs}
        ins = tuple(inner[v] if isinstance(v, Value) else v for v in self.node.inputs)
        g.outputs = [g.add_node(self.node.op, ins, self.node.attr_dict, self.node.out.shape,
                                self.node.out.dtype, self.node.loc, self.node.scope)]
        return g

    def __str__(self) -> str:
        ins = ", ".join(v.ref if isinstance(v, Value) else repr(v) for v in self.node.inputs)
        return f"extern {self.node.op}({ins}) -> {self.node.out.ref}"


@dataclass(eq=False)
class Schedule(Deferred):
    """The fused program: `steps` run in order compute `graph`'s outputs and write-backs.

    A schedule read from the program cache decodes its steps when they are first read.
    """

    graph: Graph
    steps: list = field(default_factory=list)

    @property
    def kernels(self) -> list:
        return [s for s in self.steps if isinstance(s, FusedKernel)]

    @property
    def externs(self) -> list:
        return [s for s in self.steps if isinstance(s, ExternStep)]

    def groups(self) -> dict:
        """Value -> kernel index, for `Graph.to_dot(groups=...)` (externs stay uncoloured)."""
        out = {}
        for i, k in enumerate(self.kernels):
            for n in k.nodes:
                out.setdefault(n.out, i)
        return out

    def __str__(self) -> str:
        return self.listing()

    def listing(self, numbers: list | None = None) -> str:
        """The schedule, one step a line; kernels numbered k0, k1, ... or by `numbers` (per
        step, as `kiln.passes.fusion.split_gathers` gives them)."""
        lines = [f"schedule {self.graph.name}: {len(self.graph.nodes)} nodes -> "
                 f"{len(self.kernels)} kernels + {len(self.externs)} extern calls"]
        k = 0
        for i, step in enumerate(self.steps):
            if isinstance(step, FusedKernel):
                lines.append(f"  {numbers[i] if numbers else f'k{k}'} {step}")
                k += 1
            else:
                lines.append(f"  {step}")
        return "\n".join(lines)


__all__ = ["STRIDED_VIEWS", "ExternStep", "FusedKernel", "Schedule"]
