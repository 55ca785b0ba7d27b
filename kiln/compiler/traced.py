"""What a trace made, as the compile step asks of it (computed values, aliases, lifted state,
writes to arguments) and how a replay finds each graph input (`_fetch_plan`)."""

from __future__ import annotations

import collections

from kiln.compiler.arguments import _base
from kiln.tracer.tensor import Tensor
from kiln.tracer.trace import TracedProgram


def _made_by(tracer, tensor: Tensor) -> bool:
    """Whether the traced call computed `tensor` (a value of its graph, not one it read)."""
    v = tensor._trace
    return v is not None and id(v) in tracer.known and id(tensor) not in tracer.input_of and \
        id(tracer.alias_of.get(id(tensor), tensor)) not in tracer.input_of


# how a replay finds a graph input (`_fetch_plan`): an argument, a lifted tensor, a .grad, a
# random draw, a number read from state, the place a tensor is stored, a number argument
_ARG, _LIFTED, _GRAD, _SEED, _SCALAR, _PLACE, _NUMBER = range(7)


def _fetch_plan(program: TracedProgram, n: int, device) -> list:
    """How a replay finds each of the first `n` graph inputs, resolved once per entry; random
    numbers are drawn on the host and moved to `device`, the program's."""
    plan = []
    for i, b in enumerate(program.bindings[:n]):
        if b.kind == "arg":
            plan.append((_ARG, b.path))
        elif b.kind == "seed":
            plan.append((_SEED, (b.generator, b.draw, device)))
        elif b.kind == "grad":
            plan.append((_GRAD, i))
        elif b.kind == "scalar":
            plan.append((_SCALAR, (*b.path, device.xp)))
        elif b.kind == "number":
            plan.append((_NUMBER, (b.path, b.draw, device.xp)))
        else:
            plan.append((_LIFTED, b.tensor))
    return plan


def _written_argument_shared(program: TracedProgram, pattern: tuple) -> bool:
    """Whether an argument the program writes in place shares memory with another argument
    (`pattern`: `_alias_pattern` of the call's tensors). The program reads each argument as
    a value of its own, so only a write can disagree with eager; arguments sliced from one
    tensor (a language model's inputs and targets) that it only reads replay."""
    if not pattern:
        return False
    written = [program.bindings[program.graph.inputs.index(src)] for src, _ in
               program.graph.mutations]
    shared = collections.Counter(pattern)
    return any(b.kind == "arg" and shared[pattern[b.path]] > 1 for b in written)


def _history_written(program: TracedProgram, grad_fns: dict) -> str | None:
    """A tensor the call was given or read that it wrote in place with autograd recording
    (`x.mul_(w)`, `x[1:] *= 2` with x requiring grad): its grad_fn is not the one it had when
    the call began (`grad_fns`: id -> grad_fn then). Described for the user, or None."""
    for (src, _), t in zip(program.graph.mutations, program.mutated):
        if t.grad_fn is not None and t.grad_fn is not grad_fns.get(id(t)):
            name = src.name or "a tensor"
            return f"{name} [{t.dtype.name} {list(t.shape)}]"
    return None


def _carried(tracer, t: Tensor) -> bool:
    """Whether `t`, which the trace read, may be read from the place holding it on each replay
    instead of by identity: a lifted tensor without autograd history (running state)."""
    found = tracer.input_of.get(id(t))
    if found is None or t.requires_grad or t.grad_fn is not None:
        return False
    return tracer.bindings[tracer.graph.inputs.index(found[1])].kind == "lifted"


def _computed(tracer, t: Tensor) -> bool:
    """Whether `t` is a value the trace computed in memory of its own: not one of its inputs,
    and not a view or alias (a replay's output would not share the memory eager's did)."""
    return (t._trace is not None and id(t._trace) in tracer.known and t._base is None
            and id(t) not in tracer.input_of and id(t) not in tracer.alias_of)


def _detached_result(tracer, t: Tensor) -> bool:
    """Whether `t` is `s.detach()` (or `s.data`) of a value `s` the trace computed: a replay
    stores a copy of `s`'s output there (see `_shares_memory_with_others`)."""
    source = tracer.alias_of.get(id(t))
    return source is not None and t._base is None and _computed(tracer, source)


def _stored_argument(tracer, t: Tensor) -> bool:
    """Whether `t` is a tensor the call was given as an argument, unchanged (pix2pix's
    `model.set_input(a, b)` keeping the batch on the model): a replay stores there the tensor
    its own call was given, which it returns as it is."""
    found = tracer.input_of.get(id(t))
    return (found is not None and found[0] is t and t._trace is found[1]
            and tracer.bindings[tracer.graph.inputs.index(found[1])].kind == "arg")


def _memory_root(tracer, t: Tensor) -> int:
    """The id of the tensor whose memory `t` uses: through aliases and views."""
    t = tracer.alias_of.get(id(t), t)
    while t._base is not None:              # (source, op, attrs, version, tracked)
        t = tracer.alias_of.get(id(t._base[0]), t._base[0])
    return id(t)


def _shares_memory_with_others(tracer, writes: dict, returned: list) -> list:
    """The places among `writes` holding a detached result whose memory something else the
    caller gets also uses (a returned tensor, another stored one). Eager mode shares that
    memory; a replay stores a copy, so such a place stays an effect. Where nothing else sees
    the memory, the copy differs from eager only in the version counter it does not share (an
    in-place write to it cannot invalidate the call's saved tensors)."""
    roots = collections.Counter(_memory_root(tracer, t) for t in returned)
    roots.update(_memory_root(tracer, t) for _, t in writes.values())
    return [at for at, (_, t) in writes.items()
            if id(t) in tracer.alias_of and roots[_memory_root(tracer, t)] > 1]


def _lifted_bases(program: TracedProgram) -> frozenset:
    return frozenset(id(_base(b.tensor._data)) for b in program.bindings
                     if b.kind == "lifted")
