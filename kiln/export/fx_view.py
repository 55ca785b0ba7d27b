"""`ExportedProgram.graph_module`: an exported program's IR graph as a kiln.fx GraphModule.

Each IR node becomes one call_function node whose target runs that primitive on the host
(NumPy, as the IR interpreter does), so printing the module shows the program and calling it
runs it. The placeholders follow torch's layout: the lifted parameters, buffers and constants
(p_/b_/c_ names), then the user inputs; it returns the flat tuple of outputs.
"""

from __future__ import annotations

import numpy as np

from kiln.fx.graph import Graph as FxGraph
from kiln.fx.graph_module import GraphModule
from kiln.ir import dtypes as dt
from kiln.ir.graph import Value
from kiln.ir.primitive import PRIMITIVES
from kiln.runtime.device import CPU
from kiln.tracer.tensor import Tensor

_TARGETS: dict = {}


def primitive_target(op: str):
    """A function named `op` running the primitive on tensors: `op(*inputs, dtype=name,
    **attrs)`, its result cast to `dtype` as the IR interpreter casts it."""
    fn = _TARGETS.get(op)
    if fn is None:
        prim = PRIMITIVES[op]

        def fn(*inputs, dtype: str, **attrs):
            arrays = [np.asarray(x.detach().cpu().numpy()) if isinstance(x, Tensor) else x
                      for x in inputs]
            with np.errstate(all="ignore"):
                out = np.asarray(prim.impl(np, *arrays, **attrs))
            want = dt.from_name(dtype)
            return Tensor._make(out.astype(want.np, copy=False), want, CPU)
        fn.__name__ = fn.__qualname__ = op
        fn.__module__ = "kiln.ir"           # prints as kiln_ir_<op>
        _TARGETS[op] = fn
    return fn


def graph_module(ep) -> GraphModule:
    """The GraphModule of ExportedProgram `ep` (see the module docstring)."""
    ir = ep.graph
    fx = FxGraph()
    env: dict = {}
    signature = ep.graph_signature
    n_user = len(ep.input_specs)
    value_of = dict(zip(ep.parameter_names, ir.inputs[n_user:]))
    for spec in signature.input_specs:
        if spec.target is not None:
            env[value_of[spec.target]] = fx.placeholder(spec.arg.name)
    for spec, v in zip(ep.input_specs, ir.inputs[:n_user]):
        env[v] = fx.placeholder(spec.name)
    root: dict = {}
    for i, (v, array) in enumerate(ir.constants.items()):
        name = f"_tensor_constant{i}"
        root[name] = Tensor._make(np.asarray(array), v.dtype, CPU)
        env[v] = fx.get_attr(name)
    for node in ir.nodes:
        args = tuple(env[x] if isinstance(x, Value) else x for x in node.inputs)
        kwargs = dict(node.attr_dict, dtype=node.out.dtype.name)
        env[node.out] = fx.call_function(primitive_target(node.op), args, kwargs)
    fx.output(tuple(env[v] for v in ir.outputs))
    return GraphModule(root, fx, class_name="GraphModule")
