"""What library code above the compiler (nn, optim, utils) may ask of a trace in progress.

These are the only ways `nn` and `optim` touch tracing (DESIGN.md: they use the public API):
`kiln.compiler.is_compiling()` as in `torch.compiler`, `untraced()` for state made once,
`note_grad_cleared()` for `zero_grad(set_to_none=True)`, `scalar_input()` for a number a
compiled program reads afresh on every call (a learning rate a scheduler changes), and
`replay_after()` for a pure-Python step a replay repeats (a scheduler stepped inside the
compiled function), `as_number()` for a tensor that stands for a number eager reads into Python
(an optimizer's step count), `note_python_read()` for a user's read of such a number,
`note_item_read()` for any read of a parameter group's run-time number, `note_item_write()`
for user code's write of one,
`note_flag_read()` for a read of a Module's `training` flag (while `active_traces[0]`),
`note_state_read()` for a read of an optimizer's `state` (the same way), and
`note_grads_checked()` before branching on which parameters have a `.grad`. `composite`
names the nodes a function built of several ops records (`# layer_norm @ model.py:12` in
listings).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

from kiln.runtime.device import Device
from kiln.tracer import trace as _trace
from kiln.tracer.provenance import composite, scope  # noqa: F401  (re-exported hooks)
from kiln.tracer.tensor import STATE, TRACING, Tensor

# [how many traces run now, in any thread]: a check cheaper than `is_compiling()` for a read as
# frequent as a Module's `training` (`note_flag_read` is called only while it is not 0)
active_traces = TRACING


def is_compiling() -> bool:
    """Whether this thread is tracing a function for `kiln.compile` (torch.compiler's name)."""
    return STATE.tracer is not None


@contextmanager
def untraced() -> Iterator[None]:
    """Run a block eagerly and unrecorded, inside a trace or not.

    Tensors the block makes are, to the trace, state from outside: the compiled program reads
    and writes them by identity, as it does parameters. For state that, once made, stays (an
    optimizer's lazily created moments), so the first call's trace is what every later call
    would trace.
    """
    with _trace.untraced():
        yield


def note_grad_cleared(tensor: Tensor) -> None:
    """`tensor.grad` is being set to None (zero_grad(set_to_none=True)): a compiled replay
    must clear it too. Does nothing outside a trace."""
    _trace.note_grad_cleared(tensor)


def note_grads_checked() -> None:
    """Library code is about to branch on which parameters have a `.grad` (an optimizer step
    skips those without, a clipping gathers those with): a replay must find the same ones, so
    the compiled entry guards it. Does nothing outside a trace."""
    if STATE.tracer is not None:
        STATE.tracer.grads_checked()


# a float, or NumPy's (DINO sets each step's lr from a NumPy schedule: `lr_schedule[it]`)
_FLOATS = (float, np.float64, np.float32)


def scalar_input(container: dict, key, device: Device, index: int | None = None):
    """`container[key]` (or `container[key][index]`: one of Adam's betas), a Python float, as the
    code should read it: the number itself in eager mode; while tracing, a float64 scalar tensor
    that the compiled program reads from that place on every call, so changing it between calls
    (a scheduler's rate, OneCycleLR's betas) does not retrace."""
    value = container[key] if index is None else container[key][index]
    tracer = STATE.tracer
    if tracer is None or type(value) not in _FLOATS:
        return value
    return tracer.scalar_input(container, key, device, index)


def as_number(tensor: Tensor) -> Tensor:
    """`tensor`, a 0-d tensor that stands in a trace for the Python number eager computes with
    (an optimizer's step count, which eager reads with `.item()`): what is computed from it and
    `scalar_input`s alone meets a float16 or bfloat16 tensor as that number would
    (`Tracer.stands_for_number`). Returns `tensor`; does nothing outside a trace."""
    tracer = STATE.tracer
    if tracer is not None:
        tracer.mark_number(tensor)
    return tensor


def note_python_read(container, key, value=None) -> None:
    """While tracing: user code read `container[key]` (a dict: a number the compiled program
    reads on every call, `scalar_input`) or `container.key` (another object: `value`, which the
    library changes between calls, such as a scheduler's last rates) into Python, where the trace
    may bake it in. The call's guards then keep it: the dict item's value, or the attribute's
    identity as read. Does nothing outside a trace."""
    tracer = STATE.tracer
    if tracer is None:
        return
    if isinstance(container, dict):
        if (id(container), key) not in tracer.item_writes:  # (else the call's own value)
            tracer.python_reads.add((id(container), key))
    else:
        tracer.object_reads.append((container, key, value))


def note_item_read(container, key) -> None:
    """While tracing: code (the library's or the user's) read `container[key]`, where
    `container`'s class names `key` in `_kiln_noted_keys` and tells every read of it (an
    optimizer's parameter group, its learning rate). A traced call that read no such item is
    not guarded on it: the branch of a gradient-accumulation step that does not step the
    optimizer does not trace again when a scheduler changes the rate. Does nothing outside a
    trace."""
    tracer = STATE.tracer
    if tracer is not None and (id(container), key) not in tracer.item_writes:
        # (a read of what the call itself set depends on nothing the call began with)
        tracer.item_reads.add((id(container), key))


def note_item_write(container, key) -> None:
    """While tracing: user code set `container[key]`, a number `scalar_input` reads (a
    parameter group's learning rate, set by a warmup written in the step). A `scalar_input` of
    it later in the call is the value the call wrote, not the one a replay finds there as it
    begins: the trace takes that value as it is (a constant, or the lifted number it was
    computed from); and later reads (`note_item_read`, `note_python_read`) depend on nothing
    the call began with, so they guard nothing. Does nothing outside a trace."""
    tracer = STATE.tracer
    if tracer is not None:
        tracer.item_written(container, key)


def note_flag_read(module) -> None:
    """While tracing: `module.training` was read (by the module's forward, by user code, by a
    library function). A Module whose flag no code of the traced call read is not guarded on
    it: `eval()` on a module the call never runs does not trace again."""
    tracer = STATE.tracer
    if tracer is not None:
        tracer.flag_reads.add(id(module))


def note_state_read(optimizer) -> None:
    """While tracing: `optimizer.state` was read (by its step, by user code, by a library
    function). An optimizer whose state no code of the traced call read is not guarded on it:
    an L-BFGS closure that only calls `zero_grad()` does not trace again when each L-BFGS step
    outside it changes the state's counters. (The ids share `flag_reads` with the modules.)"""
    tracer = STATE.tracer
    if tracer is not None:
        tracer.flag_reads.add(id(optimizer))


def replay_after(name: str, call) -> None:
    """While tracing: `call()`, a pure-Python step the traced call is making (it changes the
    numbers `scalar_input` reads, as `lr_scheduler.step()` does), is to be made again by every
    replay, after the program runs; a replay would otherwise skip it. `name` says it in
    messages. Does nothing outside a trace."""
    tracer = STATE.tracer
    if tracer is not None:
        tracer.replay_after(name, call)
