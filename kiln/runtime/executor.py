"""The array-module executor: runs a Graph as a precompiled list of primitive calls.

It means the same as `kiln.ir.interpreter.interpret` but prepares everything once (slots
instead of dict lookups, attribute dicts built ahead, constants moved to the device), and with
the compile-time memory plan of its graph (`kiln.passes.memory.plan_nodes`) frees each
intermediate after its last use and lets elementwise ops write into buffers that died (often
the op's own input), so a replay allocates little and costs little more than the arithmetic
itself.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir import ops as ir_ops
from kiln.ir.graph import Graph, Value
from kiln.ir.ops import PRIMITIVES
from kiln.runtime.numpy_backend import numpy_impl


class ArrayExecutor:
    """Executes one graph with `xp` (NumPy or CuPy).

    `plan` (`kiln.passes.memory.plan_nodes(graph)`, made at compile time) says what to drop
    after each node and which dying input an elementwise result may be computed into; without
    one, every value is kept to the end and each result is a new array.
    """

    def __init__(self, graph: Graph, xp=np, plan: tuple | None = None):
        self.graph, self.xp = graph, xp
        slot: dict = {}
        for v in list(graph.inputs) + list(graph.constants) + [n.out for n in graph.nodes]:
            slot[v] = len(slot)
        self.num_slots = len(slot)
        self.input_slots = [slot[v] for v in graph.inputs]
        self.constants = [(slot[v], a if xp is np else xp.asarray(a))
                          for v, a in graph.constants.items()]
        self.steps = []
        for i, n in enumerate(graph.nodes):
            prim = PRIMITIVES[n.op]
            args = tuple((True, slot[v]) if isinstance(v, Value) else (False, v)
                         for v in n.inputs)
            free, reuse = plan[i] if plan else ((), None)
            # an elementwise op with a NumPy ufunc can compute into a given buffer (`out=`)
            ufunc = getattr(np, prim.ufunc) if xp is np and prim.ufunc is not None and \
                prim.kind == ir_ops.ELEMENTWISE else None
            if ufunc is None:       # only a ufunc computes into a given buffer
                reuse = None
            impl = numpy_impl(prim) if xp is np else prim.impl
            if xp is np and prim.kind != ir_ops.MOVEMENT and \
                    any(isinstance(v, Value) and v.dtype in dt.HALF for v in n.inputs):
                halves = {np.dtype(v.dtype.np) for v in n.inputs
                          if isinstance(v, Value) and v.dtype in dt.HALF}
                impl, args = _in_float32(impl, halves), _rounded_literals(n.op, n.inputs, args)
            if dt.bfloat16 in {n.out.dtype, *(v.dtype for v in n.inputs if isinstance(v, Value))}:
                reuse = None        # (ml_dtypes' ufuncs compute bfloat16 their own way)
            self.steps.append((impl, ufunc, reuse, args, n.attr_dict,
                               np.dtype(n.out.dtype.np), slot[n.out], tuple(free)))
        # where in the user's code each checking node was traced: its error names that line
        self.check_locations = {slot[n.out]: n.loc for n in graph.nodes
                                if n.loc and n.op in ir_ops.CHECKING_OPS}
        self.output_slots = [slot[v] for v in graph.outputs]
        self.mutation_slots = [slot[new] for _, new in graph.mutations]

    def run(self, inputs: list) -> tuple[list, list]:
        """Arrays for graph.outputs and for the new values of graph.mutations."""
        xp = self.xp
        env = [None] * self.num_slots
        for s, a in zip(self.input_slots, inputs):
            env[s] = a
        for s, a in self.constants:
            env[s] = a
        with np.errstate(all="ignore"):
            try:
                for impl, ufunc, reuse, args, attrs, dtype, out_slot, free in self.steps:
                    operands = [env[x] if is_slot else x for is_slot, x in args]
                    if reuse is not None:
                        out = ufunc(*operands, out=env[reuse])
                    else:
                        out = impl(xp, *operands, **attrs)
                    if out.dtype != dtype:
                        out = out.astype(dtype)
                    if xp is np and type(out) is not np.ndarray:
                        out = np.asarray(out)       # (NumPy's 0-d results are scalars)
                    for s in free:
                        env[s] = None
                    env[out_slot] = out
            except ir_ops.BOUNDS_ERRORS as error:
                # the failing step's node (its out_slot) was traced at the user's line
                error.user_location = self.check_locations.get(out_slot, "")
                raise
        outs = [env[s] for s in self.output_slots]
        return outs, [env[s] for s in self.mutation_slots]


def _in_float32(impl, halves: set):
    """`impl` on float32 copies of its float16 and bfloat16 arrays (`halves`: their NumPy
    dtypes), as eager computes them on the CPU (`kiln.tracer.dispatch._widen_half`): a
    cumulative sum or a matmul accumulates in float32 and the result rounds once (to the node's
    dtype, by `run`)."""
    def widened(xp, *operands, **attrs):
        return impl(xp, *[a.astype(np.float32) if isinstance(a, np.ndarray) and
                          a.dtype in halves else a for a in operands], **attrs)
    return widened


def _rounded_literals(op: str, inputs: tuple, args: tuple) -> tuple:
    """A half node's number operands rounded to its dtype as eager rounds them (not mul's or
    div's, whose kernels read them as float32), where float16 or bfloat16 is its only floating
    dtype."""
    floats = {v.dtype for v in inputs if isinstance(v, Value) and
              (v.dtype.is_floating_point or v.dtype.is_complex)}
    if op in ("mul", "div") or len(floats) != 1 or not floats <= set(dt.HALF):
        return args
    half = next(iter(floats))
    return tuple((False, dt.half_value(x, half))
                 if not is_slot and (type(x) is float or type(x) is int) else (is_slot, x)
                 for is_slot, x in args)
