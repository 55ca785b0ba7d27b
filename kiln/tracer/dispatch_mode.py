"""PyTorch's `__torch_dispatch__` modes at kiln's dispatcher: a mode sees every primitive run.

A `TorchDispatchMode` (kiln.utils._python_dispatch) entered with `with` is pushed on the
thread's stack here. While the stack is not empty, `dispatch.apply` hands each primitive call
to `handle`, which calls the innermost mode's `__torch_dispatch__(func, types, args, kwargs)`:
`func` is the primitive's OpOverload (`aten.add.Tensor`, or `kiln.<prim>.default` where ATen
has no counterpart; named by `kiln.op_overloads`), `args` the primitive's inputs and `kwargs`
its attributes, so `func(*args, **kwargs)` runs it. Inside the handler that mode is off: its
own calls reach the modes below it, then the kernel.

As in PyTorch, modes sit below autograd: the handler runs with grad mode off, and its result
gets the autograd node of the primitive that was called (a mode that computes cos as sin still
differentiates as cos). A backward's primitives go through the dispatcher too, so a mode
active during `backward()` sees them. kiln's primitives are below its composites, so a mode
sees what they decompose to (softmax as max, sub, exp, sum, div).

Nothing is paid without a mode: `apply` reads one module-level counter (`ACTIVE`, the number
of threads with a mode, plus one once a Tensor subclass with its own `__torch_dispatch__`
exists: kiln.tracer.dispatch_subclass, whose `intercept` then calls `handle`) before anything
else.
"""

from __future__ import annotations

import threading

from kiln.ir.ops import P
from kiln.tracer import autograd as _autograd
from kiln.tracer.tensor import OBSERVED, STATE, WRAPPERS, Tensor

# How many threads have a dispatch mode on their stack, plus one once a Tensor subclass with
# its own __torch_dispatch__ exists (dispatch_subclass): the dispatcher's one check.
ACTIVE = [0]
_LOCK = threading.Lock()
# `overload_of(prim, args, attrs)`: the OpOverload a mode is handed; kiln.op_overloads sets it
# (the tracer names no public objects itself).
OVERLOAD_OF: list = [None]
# `arguments_of(prim, args, attrs)`: (args, kwargs) a handler is handed, ATen's where they
# compute the same (kiln.op_overloads sets it)
ARGUMENTS_OF: list = [None]
# the dispatcher itself, below any wrapper in `P.dispatch` (kiln.tracer.dispatch sets it)
KERNEL: list = [None]


def modes() -> tuple:
    """The thread's dispatch modes, innermost last."""
    return STATE.dispatch_modes


def _set_modes(stack: tuple) -> None:
    with _LOCK:
        ACTIVE[0] += bool(stack) - bool(modes())
        STATE.dispatch_modes = stack
    note_observed()


def push(mode) -> None:
    """Make `mode` the innermost dispatch mode of this thread."""
    _set_modes(modes() + (mode,))


def pop():
    """Remove and return the innermost dispatch mode of this thread."""
    stack = modes()
    if not stack:
        raise RuntimeError("no TorchDispatchMode is active to pop")
    _set_modes(stack[:-1])
    return stack[-1]


def note_observed() -> None:
    """Set OBSERVED: something watches every primitive (a wrapper in the dispatcher slot, the
    profiler's or an op observer's, or a dispatch mode), so the eager fast paths that skip the
    dispatcher (a full sum, softmax) take it. Called after each of those changes."""
    from kiln.tracer import dispatch
    # (ACTIVE counts one more once a wrapper subclass exists: the fast paths take plain
    # tensors only, so a subclass needs no dispatcher for them)
    OBSERVED[0] = ACTIVE[0] > WRAPPERS[0] or P.dispatch is not dispatch.apply


def handle(prim, args: tuple, attrs: dict, device):
    """Run one primitive through the innermost mode (`dispatch.apply` calls this)."""
    func = OVERLOAD_OF[0](prim, args, attrs)
    differentiable = prim.grad is not None and STATE.grad_enabled and any(
        isinstance(a, Tensor) and a.requires_grad for a in args)
    call_args, kwargs = ARGUMENTS_OF[0](prim, args, attrs)
    if device is not None and not any(isinstance(a, Tensor) for a in args):
        kwargs["device"] = device        # a creation's device (P.<prim>'s keyword)
    out = call_mode(func, call_args, kwargs)
    if differentiable:
        out = _record(prim, args, attrs, out, func)
    return out


def call_mode(func, args: tuple, kwargs: dict):
    """`func(*args, **kwargs)` handed to the innermost mode, with that mode off and grad mode
    off while it runs."""
    stack = modes()
    mode = stack[-1]
    if STATE.tracer is not None:           # the mode's Python would not run in a replay
        STATE.tracer.graph_break(f"the TorchDispatchMode {type(mode).__name__} sees {func}")
    types = subclass_types(args, kwargs) if WRAPPERS[0] else ()
    grad_was = STATE.grad_enabled
    STATE.dispatch_modes = stack[:-1]
    STATE.grad_enabled = False
    STATE.in_dispatch_mode += 1
    try:
        out = mode.__torch_dispatch__(func, types, args, kwargs)
    finally:
        STATE.in_dispatch_mode -= 1
        STATE.dispatch_modes = stack
        STATE.grad_enabled = grad_was
    if out is NotImplemented:
        raise RuntimeError(f"{func}: the TorchDispatchMode {type(mode).__name__} returned "
                           "NotImplemented (a mode must compute the op, e.g. with "
                           "func(*args, **kwargs))")
    return out


def subclass_types(args: tuple, kwargs: dict) -> tuple:
    """The classes among the arguments whose `__torch_dispatch__` computes (one level into
    lists and tuples), each once, subclasses before their bases and otherwise left to right,
    as PyTorch orders them: a handler's `types`."""
    found: list = []
    for a in list(args) + list(kwargs.values()):
        for e in (a if isinstance(a, (list, tuple)) else (a,)):
            cls = type(e)
            if isinstance(e, Tensor) and cls._dispatches and cls not in found:
                at = next((i for i, c in enumerate(found) if issubclass(cls, c)), len(found))
                found.insert(at, cls)
    return tuple(found)


def run_primitive(prim, args: tuple, attrs: dict, device=None):
    """An OpOverload's call of its primitive: inside a mode's handler straight to the
    dispatcher (the profiler's and op observers' wrappers already saw this op on its way to
    the mode), elsewhere through `P.dispatch` as every call."""
    if STATE.in_dispatch_mode:
        return KERNEL[0](prim, args, attrs, device)
    return P.dispatch(prim, args, attrs, device)


def _record(prim, args: tuple, attrs: dict, out, func) -> Tensor:
    """Give the mode's result the primitive's autograd node, as autograd above the mode does."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{func}: __torch_dispatch__ returned {type(out).__name__}, "
                        "expected a Tensor (the op's inputs require grad)")
    if any(out is a for a in args) or out.grad_fn is not None or out.requires_grad:
        view = out._base
        if type(out)._dispatches:       # a wrapper: its class and what it wraps
            from kiln.tracer.dispatch_subclass import alias
            fresh = alias(out)
        else:
            fresh = Tensor._make(out._data, out.dtype, out.device)    # an alias, its own node
        fresh._version, fresh._base = out._version, view
        out = fresh
    _autograd.record(prim, args, attrs, out)
    view = out._base
    if view is not None:        # taken with grad mode off above: it may be written through
        src = view[0]
        out._base = view[:4] + (src._base is None or src._base[4],)
    return out


def disabled_torch_dispatch_impl(cls, func, types, args=(), kwargs=None):
    """`__torch_dispatch__ = disabled_torch_dispatch_impl`: the subclass takes no part
    (torch._C._disabled_torch_dispatch_impl); the op runs as on plain tensors."""
    return func(*args, **(kwargs or {}))
