"""Joint forward+backward tracing: one graph computing a function's outputs and their gradients.

`trace_backward` is the one implementation: after a function has been traced, it adds one
tangent input per differentiable output and traces the backward pass (the primitives' gradient
rules, as `autograd.grad` would run them) into the same graph. `@kiln.compile` calls it on its
trace; `trace_joint` traces a function and its backward for tests and tools. The partitioner
(`kiln.passes.partition`) then splits the joint graph into a forward and a backward program.

Which tensors get a gradient follows PyTorch: floating-point outputs that require grad (and whose
graph was not spent by a `backward()` inside the function), with respect to floating-point
inputs that require grad. A non-float tensor never has a gradient, even where kiln's eager
autograd lets one require grad (`x.long()` of an `x` that does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.ir.graph import Graph
from kiln.runtime.device import CPU, to_device
from kiln.tracer.autograd import run_backward
from kiln.tracer.tensor import Tensor
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


@dataclass
class Joint:
    """What `trace_backward` added to a trace: its bookkeeping, and the gradient tensors (one
    per `info.grad_inputs` entry), to be appended to the graph's outputs."""

    info: JointInfo
    grads: list


def trace_backward(tracer: Tracer, outputs: list, consumed=(), tangents: list | None = None
                   ) -> Joint:
    """Trace the gradients of `outputs` into `tracer`'s graph, as autograd.grad computes them:
    nothing accumulates into `.grad`, and the eager graph is kept for the user's backward.

    Args:
        tracer: the trace of the function that computed `outputs` (not active now).
        outputs: the function's output tensors, flattened.
        consumed: indices of outputs whose graph a backward inside the function already spent:
            they get no tangent.
        tangents: arrays seeding the backward, one per differentiable output; ones by default.
    """
    graph = tracer.graph
    diff = [i for i, o in enumerate(outputs)
            if o.requires_grad and o.dtype.is_floating_point and i not in consumed]
    with tracer:
        num_primals = len(graph.inputs)
        seeds = []
        for k, i in enumerate(diff):
            o = outputs[i]
            xp = o.device.xp
            data = xp.ones(tuple(o.shape), o.dtype.np) if tangents is None else \
                to_device(np.asarray(tangents[k], dtype=o.dtype.np), o.device)
            t = Tensor._make(data, o.dtype, o.device)
            tracer._input(t, f"tangent{k}", Binding("arg", path=None))
            seeds.append(t)
        grad_inputs, wrt = [], []
        for tensor, v in list(tracer.input_of.values()):
            idx = graph.inputs.index(v)
            if idx < num_primals and tensor.requires_grad and tensor.dtype.is_floating_point \
                    and graph.input_kinds[idx] != "seed":
                grad_inputs.append(idx)
                wrt.append(tensor)
        grads = run_backward([outputs[i] for i in diff], seeds, retain_graph=True,
                             inputs=wrt) if diff else [None] * len(wrt)
        # an input the outputs do not reach gets no gradient, as in eager mode (its `.grad`
        # stays None, and an optimizer skips it); the others' have their dtype, as eager
        # autograd stores them in `.grad`
        reached = [k for k, g in enumerate(grads) if g is not None]
        grad_inputs = [grad_inputs[k] for k in reached]
        grads = [grads[k] if grads[k].dtype is wrt[k].dtype else grads[k].to(wrt[k].dtype)
                 for k in reached]
    return Joint(JointInfo(num_primals, len(diff), len(outputs), grad_inputs, diff), grads)


def trace_joint(fn, *args, tangents: list | None = None, name: str | None = None,
                ) -> tuple[Graph, JointInfo]:
    """Trace `fn(*args)` and its backward (`trace_backward`) into one graph.

    Args:
        fn: a function of tensors returning a tensor or a nest of tensors.
        tangents: arrays seeding the backward, one per differentiable (floating, requiring
            grad) output; ones by default.

    Returns the joint graph and its JointInfo, with the primal and tangent values of the trace
    and the gradients the eager run computed.
    """
    tracer = Tracer(name or getattr(fn, "__name__", "joint"), on_break="raise", snapshot=True)
    leaves, _ = flatten(args)
    for i, t in enumerate(leaves):
        tracer.add_arg(t, f"arg{i}", i)
    with tracer:
        outs, _ = flatten(fn(*args))
    joint = trace_backward(tracer, outs, tangents=tangents)
    (program,) = tracer.finish(list(outs) + joint.grads)
    info = joint.info
    info.snapshots = program.snapshots[:info.num_primals]
    info.tangent_values = program.snapshots[info.num_primals:]
    info.eager_grads = [to_device(g._data, CPU).copy() for g in joint.grads]
    return program.graph, info
