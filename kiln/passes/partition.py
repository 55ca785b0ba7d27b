"""Splits a joint forward+backward graph into a forward and a backward program by a minimum cut.

As in AOTAutograd's min-cut partitioner: every value the backward needs either crosses from the
forward (saved: costs its bytes of memory between the two programs) or is recomputed in the
backward from other values. A minimum s-t cut over the joint graph, with a value's bytes as its
capacity, picks the cheapest set to save. Recomputation is allowed only for cheap fusible work
(elementwise, movement, creation and small reductions), never for matmul, indexing or random
draws, which the forward computes and saves.

The forward program takes the primal inputs and returns the forward outputs, then the saved
values; the backward program takes the saved values, then the tangents, and returns one
gradient per differentiable input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kiln.ir.graph import Graph, Value
from kiln.ir.ops import CREATION, RANDOM, REDUCE
from kiln.passes.fusion import is_fusible

# A reduction reading more elements than this is not "small": recomputing it in the backward
# would re-read a large buffer, so it is saved instead.
SMALL_REDUCTION = 1 << 16


@dataclass
class PartitionReport:
    """What the partition saves and recomputes, against saving everything the backward reads."""

    saved: list = field(default_factory=list)          # Values, in forward output order
    saved_bytes: int = 0
    save_all: list = field(default_factory=list)
    save_all_bytes: int = 0
    recomputed: list = field(default_factory=list)     # Nodes the backward computes again

    def __str__(self) -> str:
        return (f"saved {len(self.saved)} values, {self.saved_bytes} bytes "
                f"(save-everything: {len(self.save_all)} values, {self.save_all_bytes} bytes); "
                f"{len(self.recomputed)} nodes recomputed in the backward")


def _recomputable(node) -> bool:
    if node.prim.kind == RANDOM or not is_fusible(node, gathers=False):
        return False
    return node.prim.kind != REDUCE or math.prod(node.value_inputs[0].shape) <= SMALL_REDUCTION


def partition(joint: Graph, info) -> tuple[Graph, Graph, PartitionReport]:
    """Split `joint` (from `kiln.tracer.joint.trace_joint`) into forward and backward graphs.

    Returns:
        (forward, backward, report): forward(primals) -> forward outputs + saved;
        backward(saved + tangents) -> gradients, in `info.grad_inputs` order.
    """
    primals = joint.inputs[:info.num_primals]
    tangents = joint.inputs[info.num_primals:info.num_primals + info.num_tangents]
    fw_outputs = joint.outputs[:info.num_forward_outputs]
    grads = joint.outputs[info.num_forward_outputs:]
    producer = joint.producers()

    def free(v) -> bool:
        """Constants and creation nodes: available anywhere at no memory cost."""
        return v in joint.constants or (v in producer and producer[v].prim.kind == CREATION)

    closure = set(tangents)            # values that depend on a tangent: backward only
    for n in joint.nodes:
        if any(v in closure for v in n.value_inputs):
            closure.add(n.out)

    import networkx as nx           # here, not at the top: it takes ~0.1 s to import
    bw_region = _ancestors(grads, producer)
    net = nx.DiGraph()
    for v in bw_region:
        if free(v):
            continue
        vin, vout = ("in", v.id), ("out", v.id)
        net.add_edge(vin, vout, capacity=v.nbytes)
        if v in closure:
            net.add_edge(vin, "sink")                       # no capacity: infinite
        elif v not in producer or not _recomputable(producer[v]):
            net.add_edge("source", vin)                     # an input, or banned from recompute
        node = producer.get(v)
        for u in (node.value_inputs if node is not None else ()):
            if not free(u):
                net.add_edge(("out", u.id), vin)
    for g in grads:
        if not free(g):
            net.add_edge(("out", g.id), "sink")
    if "source" in net and "sink" in net:
        _, (source_side, _) = nx.minimum_cut(net, "source", "sink")
    else:
        source_side = set(net.nodes) - {"sink"}

    def in_forward(v) -> bool:
        return ("in", v.id) in source_side

    # the backward: what the gradients need, stopping at forward values (saved ones)
    saved: dict = {}
    bw_nodes: set = set()
    stack = list(grads)
    seen: set = set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in joint.constants or v in tangents:
            continue
        if not free(v) and in_forward(v) and v not in closure:
            saved[v] = None
            continue
        node = producer.get(v)
        if node is None:              # a primal the cut left on the backward side: save it
            saved[v] = None
            continue
        bw_nodes.add(node)
        stack.extend(node.value_inputs)
    saved_values = sorted(saved, key=lambda v: v.id)

    forward = _subgraph(joint, joint.name + "_forward", list(zip(primals, joint.input_kinds)),
                        fw_outputs + saved_values, joint.mutations)
    backward = _subgraph(joint, joint.name + "_backward",
                         [(v, "arg") for v in saved_values + tangents], grads, [],
                         allowed=bw_nodes)

    save_all = sorted({u for n in joint.nodes if n.out in closure for u in n.value_inputs
                       if u not in closure and not free(u)} |
                      {g for g in grads if g not in closure and not free(g)},
                      key=lambda v: v.id)
    recomputed = [n for n in backward.nodes if n.out not in closure]
    report = PartitionReport(saved_values, sum(v.nbytes for v in saved_values), save_all,
                             sum(v.nbytes for v in save_all), recomputed)
    return forward, backward, report


def _ancestors(values: list, producer: dict) -> set:
    seen: set = set()
    stack = list(values)
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        node = producer.get(v)
        if node is not None:
            stack.extend(node.value_inputs)
    return seen


def _subgraph(joint: Graph, name: str, inputs: list, outputs: list, mutations: list,
              allowed: set | None = None) -> Graph:
    """The part of `joint` computing `outputs` and `mutations` from `inputs`.

    Nodes come from `allowed` (all nodes when None) plus creation nodes, which every program
    may compute for itself.
    """
    g = Graph(name)
    g._next_id = joint._next_id
    defined = set()
    for v, kind in inputs:
        if v not in defined:
            g.inputs.append(v)
            g.input_kinds.append(kind)
            defined.add(v)
    need = _needed(joint, outputs + [new for _, new in mutations], defined)
    for v, array in joint.constants.items():
        if v in need:
            g.constants[v] = array
    for n in joint.nodes:
        if n.out in need and n.out not in defined:
            if allowed is not None and n not in allowed and n.prim.kind != CREATION:
                raise AssertionError(f"partition: {n.out.ref} = {n.op} is needed but on the "
                                     "other side of the cut")
            g.nodes.append(n)
    g.outputs = list(outputs)
    g.mutations = list(mutations)
    return g


def _needed(joint: Graph, roots: list, stop: set) -> set:
    producer = joint.producers()
    seen: set = set()
    stack = list(roots)
    while stack:
        v = stack.pop()
        if v in seen or not isinstance(v, Value):
            continue
        seen.add(v)
        if v in stop:
            continue
        node = producer.get(v)
        if node is not None:
            stack.extend(node.value_inputs)
    return seen
