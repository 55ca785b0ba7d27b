"""`kiln.autograd.graph`: the grad_fn node type and the saved-tensors hooks
(torch.autograd.graph).

`saved_tensors_hooks(pack_hook, unpack_hook)` changes how autograd keeps the tensors a gradient
rule reads: each is handed to `pack_hook` when its node is recorded (in the forward), the node
keeps only what pack returned (plus the tensor's shape, dtype and version), and backward uses
`unpack_hook(packed)` in its place. kiln saves what its primitives' rules read: the inputs in a
primitive's `reads` and its output where the rule reads it; a custom Function saves what it
gave `ctx.save_for_backward`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from kiln.tracer.autograd import (Node, pop_saved_hooks, push_saved_hooks,  # noqa: F401
                                  saved_hooks_active)
from kiln.tracer.custom_function import Variable  # noqa: F401
from kiln.tracer.handles import DroppingHandle, RemovableHandle  # noqa: F401 (torch's name here)
from kiln.tracer.tensor import STATE, Tensor


def increment_version(tensor) -> None:
    """Mark `tensor` (or each tensor of an iterable) as modified in place, as an in-place op
    would: a node that saved it then refuses to run backward with the changed value."""
    for t in (tensor,) if isinstance(tensor, Tensor) else tensor:
        t._version[0] += 1


class saved_tensors_hooks:
    """Within the block, tensors saved for backward go through `pack_hook` (at save time) and
    `unpack_hook` (when backward needs them); blocks nest, the innermost pair wins.

    `pack_hook(tensor) -> Any` must not change the tensor; `unpack_hook(packed) -> Tensor` must
    give back a tensor of the saved value's shape (a different dtype or device is converted
    back). Pack hooks run with grad mode off. The hooks hold for the thread that entered the
    block, as in PyTorch.

    Under `kiln.compile` the hooks are Python a compiled replay would skip, so entering this
    block in a compiled function is a graph break (the function runs eagerly, with a message),
    and a compiled function called while hooks are active runs eagerly for that call.
    """

    def __init__(self, pack_hook: Callable[[Tensor], Any],
                 unpack_hook: Callable[[Any], Tensor]) -> None:
        self.pack_hook, self.unpack_hook = pack_hook, unpack_hook

    def __enter__(self) -> "saved_tensors_hooks":
        if STATE.hooks_disabled:
            raise RuntimeError(STATE.hooks_disabled[-1])
        if STATE.tracer is not None:
            STATE.tracer.graph_break("saved_tensors_hooks: pack and unpack hooks are Python "
                                     "that a compiled replay would not run")
        push_saved_hooks(self.pack_hook, self.unpack_hook)
        return self

    def __exit__(self, *exc) -> bool:
        pop_saved_hooks()
        return False


class save_on_cpu(saved_tensors_hooks):
    """Saved tensors are kept in CPU memory and moved back to their device for backward.

    For CPU tensors this is a pass-through (the saved tensor itself is kept). `pin_memory` is
    accepted for PyTorch's signature; kiln's CPU copies are ordinary host memory.
    """

    def __init__(self, pin_memory: bool = False, device_type: str = "cuda") -> None:
        def pack_to_cpu(t: Tensor) -> tuple:
            return t.device, t.cpu()

        def unpack_from_cpu(packed: tuple) -> Tensor:
            device, t = packed
            return t.to(device)

        super().__init__(pack_to_cpu, unpack_from_cpu)
        self.pin_memory = pin_memory


@contextlib.contextmanager
def disable_saved_tensors_hooks(error_message: str):
    """Within the block (or the decorated function), entering `saved_tensors_hooks` raises
    RuntimeError(error_message); entering it while hooks are active raises the same, as in
    PyTorch: for code that cannot work with saved-tensor hooks."""
    if saved_hooks_active():
        raise RuntimeError(error_message)
    prev = STATE.hooks_disabled
    STATE.hooks_disabled = prev + (error_message,)
    try:
        yield
    finally:
        STATE.hooks_disabled = prev


def register_multi_grad_hook(tensors, fn: Callable, *, mode: str = "all") -> RemovableHandle:
    """One hook over several tensors (torch.autograd.graph.register_multi_grad_hook).

    mode "all": once per backward pass that computes a gradient of any of them, after their
    gradients are computed, `fn(grads)` gets one entry per tensor (None for a tensor whose
    gradient that pass did not compute). mode "any": `fn(grad)` with the first of their
    gradients each pass computes. kiln calls an "all" hook when the pass ends.
    """
    from kiln.tracer.autograd import queue_callback
    if mode not in ("all", "any"):
        raise ValueError(f"Expects mode to be one of ('all', 'any') but got {mode}")
    tensors = tuple(tensors)
    state = {"grads": None, "fired": False}

    def finish() -> None:
        grads, state["grads"], state["fired"] = state["grads"], None, False
        if mode == "all" and grads is not None:
            fn(tuple(grads))

    def hook_for(i: int):
        def hook(grad):
            if state["grads"] is None:          # the first of them in this backward pass
                state["grads"] = [None] * len(tensors)
                queue_callback(finish)
            state["grads"][i] = grad
            if mode == "any" and not state["fired"]:
                state["fired"] = True
                fn(grad)
        return hook

    handles = [t.register_hook(hook_for(i)) for i, t in enumerate(tensors)]
    return DroppingHandle(lambda: [h.remove() for h in handles])


def __getattr__(name: str):
    if name == "TorchDispatchMode":              # torch.utils._python_dispatch's, loaded on use
        from kiln.utils._python_dispatch import TorchDispatchMode
        return TorchDispatchMode
    raise AttributeError(f"module 'kiln.autograd.graph' has no attribute '{name}'")
