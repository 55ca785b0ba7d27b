"""Memory planning: assigns the buffers a program computes to reusable memory by liveness.

`plan_buffers` plans a lowered program (`kiln.codegen.lower`): what the executor drops after
each step and the kept buffers it allocates; it is the only liveness planner the executors of
fused programs use. `plan_memory` plans a Schedule or Graph, for studying the passes.

A value lives from the step that writes it to the last step that reads it; outputs and
write-back values live to the end (they leave the program). Once dead, its buffer may hold a
value written by a later step, of any dtype, when it is large enough (best fit; a free buffer
grows rather than a new one being made). A step's outputs never share memory with its inputs.
Graph inputs and constants belong to the caller and are not planned.

One exception to the last two rules, `in_place_updates`: the new value of a write-back (a
parameter after an optimizer step) may be computed straight into its source's memory when
nothing reads the old value afterwards, instead of into a temporary copied back after the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kiln.ir.graph import Graph
from kiln.ir.ops import ELEMENTWISE
from kiln.ir.schedule import STRIDED_VIEWS, FusedKernel


@dataclass
class MemoryPlan:
    """`buffer_of[v]` is the index of the buffer that holds v; `buffer_bytes` their sizes."""

    buffer_of: dict = field(default_factory=dict)
    buffer_bytes: list = field(default_factory=list)
    lifetimes: dict = field(default_factory=dict)     # Value -> (first step, last step)
    naive_bytes: int = 0          # every value its own buffer
    peak_live_bytes: int = 0      # most bytes live at once: no plan can do better
    free: list = field(default_factory=list)          # per step, the values dropped after it
    node_plans: dict = field(default_factory=dict)    # step -> plan_nodes of the graph it runs

    @property
    def planned_bytes(self) -> int:
        return sum(self.buffer_bytes)

    def __str__(self) -> str:
        return (f"memory plan: {len(self.buffer_of)} values in {len(self.buffer_bytes)} buffers, "
                f"{self.planned_bytes} bytes (one buffer per value: {self.naive_bytes} bytes; "
                f"peak live: {self.peak_live_bytes} bytes)")


def _steps(program) -> tuple[Graph, list]:
    """(graph, [(inputs, outputs)]) for a Schedule or, one step per node, a Graph."""
    if isinstance(program, Graph):
        return program, [(n.value_inputs, [n.out]) for n in program.nodes]
    return program.graph, [(s.inputs, s.outputs) for s in program.steps]


def plan_memory(program) -> MemoryPlan:
    """Plan buffers for a `Schedule` (kernel outputs and extern results) or a `Graph`: every
    computed value gets one. (What an executor runs is planned by `plan_buffers`.)"""
    graph, steps = _steps(program)
    external = set(graph.inputs) | set(graph.constants)
    escapes = set(graph.outputs) | {new for _, new in graph.mutations}
    return _plan(steps, external, escapes, lambda v: v.nbytes)


def plan_buffers(program) -> MemoryPlan:
    """The memory of a lowered program (`kiln.codegen.lower.LoweredProgram`): the executor keeps
    one buffer per `buffer_bytes` entry from call to call and writes each output a step `kept`
    into its `buffer_of` buffer; `free[i]` are the slots it drops after step i. The only
    liveness planner the executors use.

    An output of a step that may return a view of its input (views, the array executor) keeps
    that input's buffer alive as long as it is read. A value that leaves the program (an output,
    a write-back) gets a buffer of its own: the caller may still hold it on the next call, and
    a buffer something else holds is replaced by fresh memory, not written over.
    """
    steps = [(s.ins, s.outs) for s in program.steps]
    external = set(program.input_slots) | set(program.constant_slots)
    escapes = set(program.output_slots) | set(program.mutation_slots)
    planned = {o for s in program.steps for o, k in zip(s.outs, s.kept) if k}
    aliases = [s.may_alias_inputs for s in program.steps]
    shapes, dtypes = program.shapes, program.dtypes
    plan = _plan(steps, external, escapes,
                 lambda x: math.prod(shapes[x]) * dtypes[x].itemsize, planned, aliases,
                 own_escapes=True)
    # the graphs the array executor may run: array steps, and a C kernel's subgraph (its
    # NumPy alternative in the trial replays, or after a failed build)
    plan.node_plans = {i: plan_nodes(s.graph) for i, s in enumerate(program.steps)
                       if s.kind in ("array", "c") and s.graph is not None}
    return plan


def plan_nodes(graph: Graph) -> tuple:
    """The memory of running `graph` one primitive at a time (the array executor): per node,
    `(slots dropped after it, slot of a dying input it may be computed into, or None)`, slots
    numbering the graph's inputs, constants and node outputs in that order.

    An input may take the result when it dies at that node, is not pinned (an input, constant,
    output or write-back), owns its memory outright (no view shares it: movement ops may be
    views) and has the result's shape and dtype; only an elementwise node's, and the executor
    uses it only where its array module computes that op into a given buffer.
    """
    values = list(graph.inputs) + list(graph.constants) + [n.out for n in graph.nodes]
    slot = {v: i for i, v in enumerate(values)}
    last_use: dict = {}
    for i, n in enumerate(graph.nodes):
        for v in n.value_inputs:
            last_use[v] = i
    pinned = set(graph.outputs) | {new for _, new in graph.mutations} | \
        set(graph.inputs) | set(graph.constants)
    # a view keeps its base alive: per buffer, the values that may alias it
    root = {v: v for v in values}
    for n in graph.nodes:
        if n.op in STRIDED_VIEWS:
            root[n.out] = root[n.inputs[0]]
    owners: dict = {}
    for v, r in root.items():
        owners.setdefault(r, set()).add(v)
    pinned_roots = {root[v] for v in pinned}
    plan = []
    for i, n in enumerate(graph.nodes):
        dying = [v for v in dict.fromkeys(n.value_inputs)
                 if last_use.get(v) == i and v not in pinned]
        reuse = None
        if n.prim.kind == ELEMENTWISE:
            for v in dying:
                r = root[v]
                if (r is v and r not in pinned_roots and owners[r] == {v}
                        and v.shape == n.out.shape and v.dtype is n.out.dtype):
                    reuse = slot[v]
                    break
        plan.append((tuple(slot[v] for v in dying), reuse))
    return tuple(plan)


def _plan(steps: list, external: set, escapes: set, nbytes, planned=None,
          aliases=None, own_escapes: bool = False) -> MemoryPlan:
    """Lifetimes of the values `steps` ([(inputs, outputs)]) compute, the values dropped after
    each step, and buffers (best fit) for the `planned` ones (all when None). `aliases[i]`: step
    i's outputs may share memory with its inputs; `own_escapes`: a value that leaves the program
    shares its buffer with no other."""
    end = len(steps)
    life: dict = {}
    root: dict = {}             # value -> the computed values whose memory it may share
    for i, (ins, outs) in enumerate(steps):
        for v in ins:
            if v in life:
                life[v] = (life[v][0], i)
        for v in outs:
            if v not in external and v not in life:
                life[v] = (i, i)
            if aliases is not None and aliases[i]:
                root[v] = {r for x in ins for r in root.get(x, (x,)) if r in life}
    for v in escapes:
        if v in life:
            life[v] = (life[v][0], end)
    # a buffer lives while any value sharing its memory is read
    held = dict(life)
    for v, rs in root.items():
        for r in rs:
            if v in life and r in held:
                held[r] = (held[r][0], max(held[r][1], life[v][1]))
    planned = set(life) if planned is None else planned & set(life)
    plan = MemoryPlan(lifetimes=life, naive_bytes=sum(nbytes(v) for v in planned))
    plan.free = [[] for _ in steps]
    for v, (_, last) in life.items():
        if v not in escapes:
            plan.free[last].append(v)
    free: list = []               # buffer indices not holding a live value
    dying: dict = {}              # step -> values whose memory is last read at that step
    for v in planned:
        dying.setdefault(held[v][1], []).append(v)
    live_bytes = 0
    for i, (_, outs) in enumerate(steps):
        for v in outs:
            if v not in planned or life[v][0] != i or v in plan.buffer_of:
                continue
            need = nbytes(v)
            fits = [b for b in free if plan.buffer_bytes[b] >= need]
            if own_escapes and v in escapes:
                b = len(plan.buffer_bytes)
                plan.buffer_bytes.append(need)
            elif fits:
                b = min(fits, key=lambda b: plan.buffer_bytes[b])
            elif free:
                b = max(free, key=lambda b: plan.buffer_bytes[b])
                plan.buffer_bytes[b] = need
            else:
                b = len(plan.buffer_bytes)
                plan.buffer_bytes.append(need)
            if b in free:
                free.remove(b)
            plan.buffer_of[v] = b
            live_bytes += need
        plan.peak_live_bytes = max(plan.peak_live_bytes, live_bytes)
        # values read for the last time here are free for the steps after this one
        for v in dying.get(i, []):
            free.append(plan.buffer_of[v])
            live_bytes -= nbytes(v)
    plan.free = [tuple(f) for f in plan.free]
    return plan


def _view_roots(graph: Graph) -> dict:
    """Value -> the value whose memory it may share: an executor may run these as views."""
    roots: dict = {}
    for n in graph.nodes:
        if n.op in STRIDED_VIEWS:
            roots[n.out] = roots.get(n.inputs[0], n.inputs[0])
    return roots


def inputs_read(schedule) -> list:
    """Per step, the graph inputs whose memory it or a later step reads (directly or through a
    view): what must not be overwritten before then."""
    graph = schedule.graph
    roots, inputs = _view_roots(graph), set(graph.inputs)
    out, read = [], set()
    for step in reversed(schedule.steps):
        read = read | ({roots.get(v, v) for v in step.inputs} & inputs)
        out.append(read)
    return out[::-1]


def in_place_updates(schedule) -> dict:
    """`new -> src` for the write-backs `(src, new)` a fused kernel may compute in src's memory.

    That is when a `FusedKernel` computes `new`, and neither src nor a view of it is read by a
    later step, is read by that kernel as a separate input, or leaves the program as an
    output. The kernel must still read src only at the position it writes (codegen checks).
    """
    graph = schedule.graph
    sources = {new: src for src, new in graph.mutations}
    roots = _view_roots(graph)
    leaving = set(graph.outputs)
    read = inputs_read(schedule) + [set()]
    out = {}
    for i, step in enumerate(schedule.steps):
        if not isinstance(step, FusedKernel):    # an extern call computes into new memory
            continue
        for new in step.outputs:
            src = sources.get(new)
            if src is None or new in leaving or src in read[i + 1]:
                continue
            aliases = [v for v in step.inputs if roots.get(v, v) is src]
            if src in leaving or any(v is not src for v in aliases) or \
                    any(roots.get(v) is src for v in leaving):
                continue
            out[new] = src
    return out
