"""Memory planning: assigns the buffers a program computes to reusable memory by liveness.

A value lives from the step that writes it to the last step that reads it; outputs and
write-back values live to the end (they leave the program). Once dead, its buffer may hold a
value written by a later step, of any dtype, when it is large enough (best fit; a free buffer
grows rather than a new one being made). A step's outputs never share memory with its inputs.
Graph inputs and constants belong to the caller and are not planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir.graph import Graph


@dataclass
class MemoryPlan:
    """`buffer_of[v]` is the index of the buffer that holds v; `buffer_bytes` their sizes."""

    buffer_of: dict = field(default_factory=dict)
    buffer_bytes: list = field(default_factory=list)
    lifetimes: dict = field(default_factory=dict)     # Value -> (first step, last step)
    naive_bytes: int = 0          # every value its own buffer
    peak_live_bytes: int = 0      # most bytes live at once: no plan can do better

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
    """Plan buffers for a `Schedule` (kernel outputs and extern results) or a `Graph`."""
    graph, steps = _steps(program)
    external = set(graph.inputs) | set(graph.constants)
    end = len(steps)
    escapes = set(graph.outputs) | {new for _, new in graph.mutations}
    life: dict = {}
    for i, (ins, outs) in enumerate(steps):
        for v in ins:
            if v in life:
                life[v] = (life[v][0], i)
        for v in outs:
            if v not in external and v not in life:
                life[v] = (i, i)
    for v in escapes:
        if v in life:
            life[v] = (life[v][0], end)

    plan = MemoryPlan(lifetimes=life, naive_bytes=sum(v.nbytes for v in life))
    free: list = []               # buffer indices not holding a live value
    dying: dict = {}              # step -> values whose last read is that step
    for v, (_, last) in life.items():
        dying.setdefault(last, []).append(v)
    live_bytes = 0
    for i, (_, outs) in enumerate(steps):
        for v in outs:
            if v not in life or life[v][0] != i or v in plan.buffer_of:
                continue
            need = v.nbytes
            fits = [b for b in free if plan.buffer_bytes[b] >= need]
            if fits:
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
            live_bytes -= v.nbytes
    return plan
