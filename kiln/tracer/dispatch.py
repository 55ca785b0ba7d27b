"""The op dispatcher: every primitive call runs here (check, compute, record autograd, trace).

`apply(prim, args, attrs)` is the only way a tensor operation happens. For each call it
1. looks up the result's shape and dtype from the primitive's rule (cached per signature), so
   bad input fails before any work, with the op, the shapes and the user's source line;
2. computes the result with the device's array module;
3. records an autograd node when grad mode is on and an input requires grad;
4. appends an IR node when a trace is active.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from kiln.ir import ops as ir_ops
from kiln.ir.ops import P, Primitive, ShapeError
from kiln.runtime.device import CPU, Device
from kiln.tracer.tensor import STATE, Tensor

_KILN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INFER_CACHE: dict = {}


def user_location(skip_kiln: bool = True) -> str:
    """`file:line` of the innermost frame outside the kiln package: the user's line."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (skip_kiln and os.path.abspath(path).startswith(_KILN_DIR)):
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def op_error(op: str, message: str, kind: type = RuntimeError) -> Exception:
    """An exception for the user: which op, what went wrong, and where in their code."""
    return kind(f"{op}: {message} (at {user_location()})")


def infer(prim: Primitive, args: tuple, attrs: dict):
    """The primitive's result (shape, dtype), from its rule; raises the user-facing error."""
    shapes = tuple(a._data.shape if isinstance(a, Tensor) else () for a in args)
    dtypes = tuple(a.dtype if isinstance(a, Tensor) else None for a in args)
    key = (prim.name, shapes, dtypes, tuple(attrs.items()))
    try:
        hit = _INFER_CACHE.get(key)
    except TypeError:              # an unhashable attribute: compute without caching
        key, hit = None, None
    if hit is not None:
        return hit
    try:
        result = prim.infer(shapes, dtypes, **attrs)
    except ShapeError as e:
        raise op_error(prim.name, str(e), e.kind) from None
    if key is not None:
        _INFER_CACHE[key] = result
    return result


def apply(prim: Primitive, args: tuple, attrs: dict, device: Device | None = None) -> Tensor:
    """Run one primitive on tensors and Python-number literals; returns a new Tensor."""
    if device is None:
        device = CPU
        for a in args:
            if isinstance(a, Tensor):
                device = a.device
                break
    shape, dtype = infer(prim, args, attrs)
    arrays = [a._data if isinstance(a, Tensor) else a for a in args]
    for a in args:
        if isinstance(a, Tensor) and a.device is not device:
            raise op_error(prim.name, f"Expected all tensors to be on the same device, but "
                           f"found at least two devices, {device} and {a.device}!")
    xp = device.xp
    try:
        if prim.quiet:
            with np.errstate(all="ignore"):
                out = prim.impl(xp, *arrays, **attrs)
        else:
            out = prim.impl(xp, *arrays, **attrs)
    except (IndexError, ValueError, TypeError) as e:
        raise op_error(prim.name, str(e), type(e)) from None
    if out.dtype != dtype.np:
        out = out.astype(dtype.np)
    if xp is np and type(out) is not np.ndarray:
        out = np.asarray(out)        # NumPy hands back scalars for 0-d results
    result = Tensor._make(out, dtype, device)
    if prim.kind == ir_ops.MOVEMENT and len(arrays) == 1 and getattr(out, "base", None) is not None:
        result._version = args[0]._version   # a view shares its base's version counter

    if STATE.grad_enabled and prim.grad is not None:
        for a in args:
            if isinstance(a, Tensor) and a.requires_grad:
                from kiln.tracer.autograd import record
                record(prim, args, attrs, result)
                break
    if STATE.tracer is not None:
        STATE.tracer.record(prim, args, attrs, result)
    return result


P.dispatch = apply
