"""Observers of dispatched primitives: a function told of every primitive kiln runs eagerly
(its name, inputs, attributes and result), for tools that count rather than time
(`kiln.utils.flop_counter`).

Like the profiler's recorder, this swaps the dispatcher slot (`P.dispatch`) for a wrapper while
any observer is registered and puts it back when the last one leaves, so the dispatcher runs
unchanged otherwise. The wrapper and the profiler's timing wrapper may stack in either order;
one that leaves while the other sits above it is spliced out of the chain, never left inside it.
"""

from __future__ import annotations

from typing import Callable

from kiln.ir.ops import PRIMITIVES, P
from kiln.tracer import dispatch_mode
from kiln.tracer.tensor import Tensor

_OBSERVERS: list = []        # fn(name, args, attrs, out), called after each dispatched primitive
_INNER: list = [None]        # the dispatch the wrapper calls, while it is in the chain


def _observed_dispatch(prim, args, attrs, device=None):
    """P.dispatch while observed: the dispatcher's call, then each observer."""
    inner = _INNER[0]
    out = inner(prim, args, attrs, device)
    for fn in tuple(_OBSERVERS):
        fn(prim.name, args, attrs, out)
    return out


def add_op_observer(fn: Callable) -> None:
    """Call `fn(name, args, attrs, out)` after every primitive dispatched from now on, until
    `remove_op_observer(fn)`. `args` are the primitive's inputs (tensors and Python numbers),
    `attrs` its attribute dict, `out` its result tensor."""
    _OBSERVERS.append(fn)
    if _INNER[0] is None:
        _INNER[0] = P.dispatch
        P.dispatch = _observed_dispatch
    dispatch_mode.note_observed()


def remove_op_observer(fn: Callable) -> None:
    """Stop calling `fn`; the last observer to go takes the wrapper out of the dispatch chain."""
    from kiln.profiler import recorder
    if fn in _OBSERVERS:
        _OBSERVERS.remove(fn)
    if _OBSERVERS or _INNER[0] is None:
        return
    inner, _INNER[0] = _INNER[0], None
    if P.dispatch is _observed_dispatch:
        P.dispatch = inner
    elif recorder._SAVED.get("dispatch") is _observed_dispatch:
        recorder._SAVED["dispatch"] = inner          # the profiler's wrapper sits above: relink
    else:                                            # pragma: no cover - a foreign wrapper
        _INNER[0] = inner                            # stays in the chain, passing calls through
    dispatch_mode.note_observed()


def splice_out(wrapper: Callable, inner: Callable) -> bool:
    """Take `wrapper` out from under the observer wrapper (its inner call becomes `inner`);
    the profiler's recorder calls this when it stops below an active observer."""
    if _INNER[0] is wrapper:
        _INNER[0] = inner
        return True
    return False


def primitive_names() -> tuple:
    """The names of kiln's primitives (the ops an observer is told of)."""
    return tuple(PRIMITIVES)


def shape_of(value):
    """A tensor argument's shape as a tuple of ints; anything else unchanged."""
    return tuple(value.shape) if isinstance(value, Tensor) else value
