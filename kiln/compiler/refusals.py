"""Reasons a call runs eagerly that are found beside its trace: dtypes compiled programs do
not compute in, an autograd mode replays would not honour, a return value a replay cannot
rebuild, a function the tracer cannot run."""

from __future__ import annotations

import inspect

from kiln.compiler import guards
from kiln.compiler.tracing import _flatten_args
from kiln.ir import dtypes as dt
from kiln.ir.dtypes import DType
from kiln.runtime.device import Device
from kiln.tracer.autograd import saved_hooks_active
from kiln.tracer.forward_ad import LEVEL as DUAL_LEVEL
from kiln.tracer.symbolic_number import describe
from kiln.tracer.tensor import Tensor


# The backends whose compiled code computes bfloat16: on the CPU (bfloat16 tensors are only
# ever CPU tensors: kiln has no bfloat16 on CUDA), C kernels and the NumPy executor
_BFLOAT16_BACKENDS = ("auto", "c", "numpy")


def _reaches_bfloat16(args: tuple, kwargs: dict, reachable: dict) -> bool:
    """Whether a call's arguments (tensors, modules, optimizers, nested in containers) or the
    tensors its function reaches by name hold a bfloat16 tensor."""
    tensors = list(reachable.values())
    for v in _flatten_args((args, kwargs))[0] + list(args) + list(kwargs.values()):
        if isinstance(v, Tensor):
            tensors.append(v)
        elif hasattr(v, "named_parameters") and hasattr(v, "named_buffers"):
            tensors += [t for _, t in v.named_parameters()] + [t for _, t in v.named_buffers()]
        elif hasattr(v, "param_groups"):
            tensors += [p for group in v.param_groups for p in group["params"]]
    return any(isinstance(t, Tensor) and t.dtype is dt.bfloat16 for t in tensors)


def _reached_complex(args: tuple, kwargs: dict, reachable: dict, names: dict) -> str | None:
    """The first complex tensor a call's arguments or its function's reachable tensors hold,
    described for the user (" (freqs_cis: complex64[8, 4])"), or None."""
    def describe(name, t):
        return f" ({name}: {t.dtype.name}{list(t.shape)})"
    for i, v in enumerate(list(args) + list(kwargs.values())):
        if isinstance(v, Tensor) and v.dtype.is_complex:
            return describe(f"argument {i}", v)
    for v in _flatten_args((args, kwargs))[0] + list(args) + list(kwargs.values()):
        if isinstance(v, Tensor) and v.dtype.is_complex:
            return describe("an argument's tensor", v)
        if hasattr(v, "named_parameters") and hasattr(v, "named_buffers"):
            for n, t in list(v.named_parameters()) + list(v.named_buffers()):
                if t.dtype.is_complex:
                    return describe(n, t)
        elif hasattr(v, "param_groups"):
            for p in (p for group in v.param_groups for p in group["params"]):
                if p.dtype.is_complex:
                    return describe("an optimizer's parameter", p)
    for key, t in reachable.items():
        if isinstance(t, Tensor) and t.dtype.is_complex:
            return describe(names.get(key, "a tensor it reaches"), t)
    return None


def _complex_node(graph) -> str | None:
    """The first complex value a traced graph makes, described (" (%7 = rfft2(...), line)")."""
    for n in graph.nodes:
        if n.out.dtype.is_complex:
            where = getattr(n, "loc", None)
            return f" (made by {n.op} -> {n.out.dtype.name}{list(n.out.shape)}" + \
                (f" at {where}" if where else "") + ")"
    return None


def _number_rounded_to_bfloat16(tracer) -> str | None:
    """A Python number the trace made a graph input (an optimizer's hyperparameter, read on
    every call; a lifted number argument) that reaches a bfloat16 op rounded to bfloat16,
    described ("the optimizer's 'momentum'"), or None. Eager computes `buf.mul_(0.9)` on a
    bfloat16 `buf` with 0.9 as a float32, `p.add_(g, alpha=-lr)` in float32 rounded once; the
    traced step casts the number to bfloat16 first (momentum 0.8984375) and rounds `g * -lr`
    before adding, an error that compounds over a training run."""
    graph = tracer.graph
    numbers = {v: b for v, b in zip(graph.inputs, tracer.bindings)
               if b.kind in ("scalar", "number")}
    if not numbers:
        return None
    # (a lifted number that is a bfloat16 input holds the number as the op that reads it
    # takes it, rounded through float32: functional.common._with_half)
    found = [v for n in graph.nodes if n.out.dtype is dt.bfloat16
             for v in n.inputs if v in numbers and v.dtype is not dt.bfloat16]
    if not found:
        return None
    b = numbers[found[0]]
    return f"the optimizer's {b.path[1]!r}" if b.kind == "scalar" else \
        f"the number argument {found[0].name}"


def _computes_in_bfloat16(graph) -> bool:
    """Whether a traced graph has a bfloat16 input, constant or node."""
    return any(v.dtype is dt.bfloat16 for v in graph.inputs) or \
        any(v.dtype is dt.bfloat16 for v in graph.constants) or \
        any(n.out.dtype is dt.bfloat16 for n in graph.nodes)


def _not_traceable(fn) -> str | None:
    """Why `fn` can never be replayed, or None: a generator (or async) function's body runs
    when its result is iterated, after the call returned."""
    target = getattr(fn, "__func__", fn)
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        return "is a generator function (its body runs as the result is iterated)"
    if inspect.iscoroutinefunction(target):
        return "is a coroutine function (its body runs when awaited)"
    return None


_REBUILDABLE = (type, slice, type(None))


def _unreplayable_return(tree) -> str | None:
    """Why a replay could not rebuild this return value, or None: every constant in it must be
    a Python scalar (or a type, slice, dtype or device); another object may be one the call made,
    or may change, and a replay would hand back the traced call's."""
    bad = []

    def walk(t):
        tag = t[0]
        if tag == "T" or tag == "S" or tag == "SC" or tag == "I":
            return
        if tag == "C":
            x = t[1]
            if not (type(x) in guards.SCALARS or isinstance(x, (*_REBUILDABLE, DType, Device))):
                bad.append(type(x).__name__)
            return
        for v in t[1]:
            walk(v[1] if tag is dict else v)
    walk(tree)
    if bad:
        return f"it returns a {bad[0]} object, which a replay cannot rebuild"
    return None


def _eager_autograd_mode() -> str | None:
    """The autograd mode active on this thread that compiled replays do not honour, if any."""
    if saved_hooks_active():
        return ("saved_tensors_hooks, whose pack and unpack hooks a compiled replay would not "
                "run")
    if DUAL_LEVEL.index is not None:
        return "a forward AD dual_level, whose tangents a compiled program would not carry"
    return None
