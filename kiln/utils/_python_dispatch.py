"""`kiln.utils._python_dispatch` (torch.utils._python_dispatch): TorchDispatchMode.

A mode entered with `with` sees every primitive kiln runs on this thread, forward and
backward, below autograd, as `__torch_dispatch__(func, types, args, kwargs)`; `func` is an
OpOverload (`kiln.ops.aten.add.Tensor`, or `kiln.<prim>.default` where ATen has no
counterpart), `args` the primitive's inputs and `kwargs` its attributes, and
`func(*args, **kwargs)` runs it. The machinery is `kiln.tracer.dispatch_mode` (reached through
`kiln.ops`); the names are `kiln.op_overloads`. Tensor subclasses with their own
`__torch_dispatch__` (wrapper subclasses) are `kiln.tracer.dispatch_subclass`'s; the helpers
their handlers use (`is_traceable_wrapper_subclass`, `return_and_correct_aliasing`) are here.

    class LoggingMode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            print(func)
            return func(*args, **(kwargs or {}))
"""

from __future__ import annotations

import contextlib

import kiln
from kiln.ops import dispatch_mode

__all__ = ["TorchDispatchMode"]


class TorchDispatchMode:
    """Base class of dispatch modes: override `__torch_dispatch__`, enter with `with`."""

    def __init__(self, _dispatch_key=None):
        if _dispatch_key is not None:
            raise NotImplementedError("TorchDispatchMode: kiln has no dispatch keys "
                                      f"(got _dispatch_key={_dispatch_key!r}); leave it None")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        raise NotImplementedError(f"{type(self).__name__} must define __torch_dispatch__"
                                  "(self, func, types, args=(), kwargs=None)")

    def __enter__(self):
        dispatch_mode.push(self)
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        dispatch_mode.pop()

    @classmethod
    def push(cls, *args, **kwargs):
        """`with Mode.push(...)`: an instance to enter (torch's older spelling)."""
        return cls(*args, **kwargs)

    @classmethod
    def is_infra_mode(cls) -> bool:
        return False


def _get_current_dispatch_mode():
    """The innermost active dispatch mode of this thread, or None."""
    stack = dispatch_mode.modes()
    return stack[-1] if stack else None


def _get_current_dispatch_mode_stack() -> list:
    """This thread's active dispatch modes, outermost first."""
    return list(dispatch_mode.modes())


def _len_torch_dispatch_stack() -> int:
    return len(dispatch_mode.modes())


@contextlib.contextmanager
def _pop_mode_temporarily():
    """`with _pop_mode_temporarily() as mode:` the innermost mode is off inside (ops reach the
    modes below it) and back on after."""
    mode = dispatch_mode.pop()
    try:
        yield mode
    finally:
        dispatch_mode.push(mode)


@contextlib.contextmanager
def _disable_current_modes():
    """`with _disable_current_modes() as modes:` no dispatch mode is active inside; `modes`
    are the ones taken off, innermost first (as torch's)."""
    popped = []
    while dispatch_mode.modes():
        popped.append(dispatch_mode.pop())
    try:
        yield popped
    finally:
        for mode in reversed(popped):
            dispatch_mode.push(mode)


def is_traceable_wrapper_subclass(t) -> bool:
    """Whether `t` is a wrapper subclass tensor (its class computes its ops in
    `__torch_dispatch__`) that says what it wraps (`__tensor_flatten__` and
    `__tensor_unflatten__`), as torch's."""
    return isinstance(t, kiln.Tensor) and is_traceable_wrapper_subclass_type(type(t))


def is_traceable_wrapper_subclass_type(cls) -> bool:
    return (isinstance(cls, type) and issubclass(cls, kiln.Tensor) and cls._dispatches
            and hasattr(cls, "__tensor_flatten__") and hasattr(cls, "__tensor_unflatten__"))


def return_and_correct_aliasing(func, args, kwargs, out):
    """What a wrapper's `__torch_dispatch__` returns for `func`: for an in-place op
    (`aten.add_.Tensor`, `aten.copy_.default`) the tensor it wrote into, `args[0]`, as torch's
    (the handler's new wrapper would otherwise stand for it). kiln keeps no storages, so a view
    op's result is returned as it is (a wrapper's views alias through what it wraps)."""
    name = getattr(func, "_opname", "")
    if name.endswith("_") and not name.startswith("_") and args:
        return args[0]
    return out
