"""Runs a fused Schedule: each FusedKernel as one generated Triton kernel, externs as calls.

On NumPy memory the kernels run in Triton's interpreter (slow: for tests and for reading the
kernels); on CuPy memory they are compiled and launched on CuPy's current stream. A kernel the
code generator cannot lower runs through the array executor instead, so every schedule runs.
"""

from __future__ import annotations

import numpy as np

from kiln.codegen.kernel import LoweringError
from kiln.ir.graph import Graph, Value
from kiln.runtime.executor import ArrayExecutor


def _single_node_graph(node) -> Graph:
    g = Graph(node.op)
    inner = {v: g.add_input(v.shape, v.dtype, v.name) for v in dict.fromkeys(node.value_inputs)}
    ins = tuple(inner[v] if isinstance(v, Value) else v for v in node.inputs)
    g.outputs = [g.add_node(node.op, ins, node.attr_dict, node.out.shape, node.out.dtype,
                            node.loc)]
    return g


class ScheduleExecutor:
    """Executes `schedule` on `xp` memory; `kernels` lists (name, Triton source or None)."""

    def __init__(self, schedule, xp=np):
        from kiln.runtime.triton_launch import render
        self.schedule, self.xp = schedule, xp
        self.backend = "interpreter" if xp is np else "cuda"
        graph = schedule.graph
        self.steps = []
        self.kernels = []           # (kernel name, source or None when it was not lowered)
        for step in schedule.steps:
            if hasattr(step, "subgraph"):      # a fused kernel; the rest are extern nodes
                try:
                    tk = render(step.subgraph)
                    self.steps.append(("triton", tk, step.inputs, step.outputs, step.subgraph))
                    self.kernels.append((tk.name, tk.source))
                    continue
                except LoweringError as e:
                    self.kernels.append((step.name, None, str(e)))
                    sub = step.subgraph
            else:
                sub = _single_node_graph(step.node)
            self.steps.append(("array", ArrayExecutor(sub, xp), step.inputs, step.outputs, sub))
        self.graph = graph

    def run(self, inputs: list) -> tuple[list, list]:
        from kiln.runtime.triton_launch import launch
        xp = self.xp
        graph = self.graph
        env: dict = dict(zip(graph.inputs, inputs))
        env.update({v: (a if xp is np else xp.asarray(a)) for v, a in graph.constants.items()})
        for kind, runner, ins, outs, sub in self.steps:
            args = [env[v] for v in ins]
            if kind == "triton":
                args = [xp.ascontiguousarray(a, dtype=v.dtype.np)
                        for a, v in zip(args, sub.inputs)]
                results = [xp.empty(v.shape, dtype=v.dtype.np) for v in sub.outputs]
                launch(runner, args, results, self.backend)
            else:
                results, _ = runner.run(args)
            env.update(zip(outs, results))
        return [env[v] for v in graph.outputs], [env[new] for _, new in graph.mutations]
