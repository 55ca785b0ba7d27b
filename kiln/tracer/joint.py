"""Joint forward+backward tracing: one graph computing a function's outputs and their gradients.

`trace_joint` traces `fn`, adds one tangent input per differentiable output, and traces the
backward pass (the primitives' gradient rules) into the same graph. The partitioner
(`kiln.passes.partition`) then splits it into a forward and a backward program.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.ir.graph import Graph
from kiln.runtime.device import CPU, to_device
from kiln.tracer.autograd import run_backward
from kiln.tracer.trace import Binding, Tracer, flatten


@dataclass
class JointInfo:
    """Bookkeeping of a joint graph: which inputs and outputs are which.

    The joint graph's inputs are the primals (arguments, lifted tensors, seeds) then the
    tangents; its outputs are the forward outputs, then one gradient per `grad_inputs` entry.
    """

    num_primals: int
    num_tangents: int
    num_forward_outputs: int
    grad_inputs: list                     # indices (into graph.inputs) of inputs with a gradient
    differentiable_outputs: list          # forward output indices that got a tangent
    snapshots: list = field(default_factory=list)      # primal values at trace time
    tangent_values: list = field(default_factory=list)
    eager_grads: list = field(default_factory=list)    # the eager run's gradients

    @property
    def tangent_inputs(self) -> list:
        return list(range(self.num_primals, self.num_primals + self.num_tangents))


def trace_joint(fn, *args, tangents: list | None = None, name: str | None = None,
                ) -> tuple[Graph, JointInfo]:
    """Trace `fn(*args)` and its backward into one graph.

    Args:
        fn: a function of tensors returning a tensor or a nest of tensors.
        tangents: arrays seeding the backward, one per differentiable (floating, requiring
            grad) output; ones by default.
    """
    from kiln.tracer.tensor import Tensor

    tracer = Tracer(name or getattr(fn, "__name__", "joint"), on_break="raise", snapshot=True)
    leaves, _ = flatten(args)
    for i, t in enumerate(leaves):
        tracer.add_arg(t, f"arg{i}", i)
    with tracer:
        result = fn(*args)
        outs, _ = flatten(result)
        diff = [i for i, o in enumerate(outs) if o.requires_grad and o.dtype.is_floating_point]
        graph = tracer.graph
        num_primals = len(graph.inputs)
        seeds = []
        for k, i in enumerate(diff):
            o = outs[i]
            data = (np.ones(o.shape, o.dtype.np) if tangents is None
                    else np.asarray(tangents[k], dtype=o.dtype.np))
            t = Tensor._make(to_device(data, o.device), o.dtype, o.device)
            tracer._input(t, f"tangent{k}", Binding("arg", path=len(leaves) + k))
            seeds.append(t)
        grad_inputs = []
        wrt = []
        for idx, v in enumerate(graph.inputs[:num_primals]):
            tensor = _tensor_of(tracer, v)
            if tensor is not None and tensor.requires_grad and tensor.dtype.is_floating_point \
                    and graph.input_kinds[idx] != "seed":
                grad_inputs.append(idx)
                wrt.append(tensor)
        grads = run_backward([outs[i] for i in diff], seeds, inputs=wrt) if diff else \
            [None] * len(wrt)
        from kiln.tracer import creation
        grads = [g if g is not None else creation.zeros(*w.shape, dtype=w.dtype, device=w.device)
                 for g, w in zip(grads, wrt)]
    for t, g in zip(wrt, grads):
        if g.dtype is not t.dtype:
            raise TypeError(f"gradient of {list(t.shape)} input has dtype {g.dtype.name}")
    (program,) = tracer.finish(list(outs) + list(grads))
    info = JointInfo(num_primals, len(diff), len(outs), grad_inputs, diff,
                     snapshots=program.snapshots[:num_primals],
                     tangent_values=program.snapshots[num_primals:],
                     eager_grads=[to_device(g._data, CPU).copy() for g in grads])
    return program.graph, info


def _tensor_of(tracer: Tracer, v):
    for tensor, value in tracer.input_of.values():
        if value is v:
            return tensor
    return None
