"""The IR interpreter: runs a Graph with NumPy. It is the executable meaning of the IR.

Every pass and backend is tested against it: a rewrite is correct when the interpreter gives
the same outputs before and after.
"""

from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Value
from kiln.ir.ops import PRIMITIVES


def interpret(graph: Graph, inputs: list, xp=np) -> tuple[list, list]:
    """Run `graph` on arrays, one per graph input.

    Returns:
        (outputs, mutated): arrays for `graph.outputs`, and for each of `graph.mutations` the
        new value of the written input.
    """
    if len(inputs) != len(graph.inputs):
        raise ValueError(f"graph {graph.name} takes {len(graph.inputs)} inputs, got "
                         f"{len(inputs)}")
    env: dict = {}
    for v, a in zip(graph.inputs, inputs):
        env[v] = a
    for v, a in graph.constants.items():
        env[v] = a if xp is np else xp.asarray(a)
    for node in graph.nodes:
        prim = PRIMITIVES[node.op]
        args = [env[v] if isinstance(v, Value) else v for v in node.inputs]
        with np.errstate(all="ignore"):
            out = prim.impl(xp, *args, **node.attr_dict)
        want = node.out.dtype.np
        if out.dtype != want:
            out = out.astype(want)
        if xp is np and type(out) is not np.ndarray:
            out = np.asarray(out)
        env[node.out] = out
    return [env[v] for v in graph.outputs], [env[new] for _, new in graph.mutations]
