"""Number arguments and numbers in Python state that a compiled function lifts to graph inputs
(`kiln.tracer.symbolic_number`): how a call's key shows them, where a trace stored or returned
their proxies, and what a replay writes back to the places its traced call changed (a step
counter). Used by `kiln.compiler`'s `CompiledFunction`."""

from __future__ import annotations

import numpy as np

from kiln.compiler import guards
from kiln.tracer.symbolic_number import SymbolicNumber, evaluate
from kiln.tracer.tensor import Tensor
from kiln.tracer.trace import TracedProgram


class _LiftedNumber:
    """A lifted number argument in a call's key: its type, not its value (one object per type,
    `_LIFTED_NUMBERS`: compared and hashed by identity, as cheaply as a key's part can be)."""

    __slots__ = ("kind",)

    def __init__(self, kind: type):
        self.kind = kind

    def __repr__(self) -> str:
        return f"<lifted {self.kind.__name__}>"


# NumPy's scalars too (`lam = np.random.beta(a, a)`, a temperature from np.maximum): ops take
# them as Python numbers, and torch.compile lifts them as it lifts floats. (Named apart from
# the fetch kind `_LIFTED`, which this dict used to rebind: the replay's kind tests compared
# dicts.)
_LIFTED_NUMBERS = {kind: _LiftedNumber(kind) for kind in (int, float, np.float64, np.float32,
                                                          np.int64, np.int32)}


def _number_arguments(args, kwargs):
    """((position, None) or (None, keyword), value) of each int/float argument (not bool),
    NumPy's float and int scalars included."""
    for i, a in enumerate(args):
        if type(a) in _LIFTED_NUMBERS:
            yield (i, None), a
    for k, v in kwargs.items():
        if type(v) in _LIFTED_NUMBERS:
            yield (None, k), v


def _lifted_as_types(lifted: dict, args: tuple, kwargs: dict) -> tuple:
    """The arguments with each lifted number as its `_LiftedNumber` (the key's view)."""
    args, copied = list(args), bool(kwargs)
    kwargs = dict(kwargs) if copied else kwargs
    for i, k in lifted:
        if k is None:
            if i < len(args) and type(args[i]) in _LIFTED_NUMBERS:
                args[i] = _LIFTED_NUMBERS[type(args[i])]
        elif copied and type(kwargs.get(k)) in _LIFTED_NUMBERS:
            kwargs[k] = _LIFTED_NUMBERS[type(kwargs[k])]
    return tuple(args), kwargs


def _lifted_names(program: TracedProgram) -> list:
    """How `explain` names each lifted number argument of a program: `lr (%lr: f32[])`."""
    return [f"{v.name} ({v.ref}: {b.draw.name}[])" for v, b in zip(program.graph.inputs,
                                                                 program.bindings)
            if b.kind == "number"]


def _stored_proxies(effects: list) -> bool:
    """Whether the traced call stored a lifted number's proxy in a place it changed (`self.lr =
    lr`): the place gets the number back, and the proxy counts as read (a replay would not
    store the new value)."""
    found = False
    for g in effects:
        value = g.read() if g.kind in ("id", "value") else None
        if type(value) is SymbolicNumber:
            value.specialise("stored")
            write = getattr(g.read, "write", None)
            if write is not None:
                write(value.value)
            found = True
        container = getattr(g.read, "container", None)     # `history.append(lr)`
        if type(container) in (list, dict):
            keys = range(len(container)) if type(container) is list else list(container)
            for k in keys:
                item = container[k]
                if type(item) is SymbolicNumber:
                    container[k] = item.specialise("stored")
                    found = True
    return found


def _group_number_writes(effects: list) -> tuple[list, list]:
    """Of the places the traced call changed (`effects`), those where user code stored a lifted
    number's proxy in an item its container reads at run time (a parameter group's `lr` set
    from the step number by a warmup written in the step): each place gets its number back,
    and every replay writes the new value there, computed from its call's numbers
    (`TracedProgram.number_writes`), while the program computes with the proxy's graph value.
    Returns (those writes, the other effects)."""
    writes, others = [], []
    for g in effects:
        owner, at = getattr(g.read, "owner", None), getattr(g.read, "at", None)
        write = getattr(g.read, "write", None)
        value = g.read() if g.kind in ("id", "value") and write is not None else None
        where = _replayable(value)
        if where is not None and owner is not None and at is not None and \
                at[1] in getattr(type(owner), "_kiln_noted_keys", ()):
            write(value.value if type(value) is SymbolicNumber else
                  tuple(x.value if type(x) is SymbolicNumber else x for x in value))
            writes.append((g.source, write, where, None))
        else:
            others.append(g)
    return writes, others


def _replayable(value):
    """The expression a replay computes `value` by (a proxy, or a tuple of proxies and
    numbers: Adam's betas), or None."""
    if type(value) is SymbolicNumber:
        return value.where if value.specialised is None else None
    if type(value) is not tuple or not any(type(x) is SymbolicNumber for x in value) or \
            not all(type(x) in (int, float) or type(x) is SymbolicNumber and
                    x.specialised is None for x in value):
        return None
    return ("expr", _items, tuple(("at", x.where) if type(x) is SymbolicNumber else
                                  ("value", x, repr(x)) for x in value))


def _items(*numbers) -> tuple:
    """The tuple of `numbers` (a replay's betas)."""
    return numbers


_items.__name__ = "tuple"           # (as `explain` spells the expression)


# the types of a number in Python state that a compiled step may change and replay
# (`CompiledFunction._lift_counters`): not bool (a flag, set again by `_replay_flags`)
_STATE_NUMBERS = (int, float)


def _proxies_in(tree, depth: int = 4) -> list:
    """The SymbolicNumbers in a result: its tuples', lists' and dicts' items and its objects'
    attributes, `depth` levels down; those in a list, a dict or an object's attributes are
    replaced there by their numbers (a tuple is rebuilt by `_without_proxies`)."""
    if type(tree) is SymbolicNumber:
        return [tree]
    if depth == 0 or isinstance(tree, (Tensor, str, bytes, type)):
        return []
    fields = tree if isinstance(tree, dict) else getattr(tree, "__dict__", None)
    if isinstance(tree, (list, dict)) or isinstance(fields, dict):
        items = list(fields.items()) if isinstance(fields, dict) else list(enumerate(tree))
        owner = fields if isinstance(fields, dict) else tree
        found = []
        for k, x in items:
            if type(x) is SymbolicNumber:
                owner[k] = x.value
                found.append(x)
            else:
                found += _proxies_in(x, depth - 1)
        return found
    if isinstance(tree, (tuple, set, frozenset)):
        return [p for x in tree for p in _proxies_in(x, depth - 1)]
    return []


def _number_write(where, value) -> str:
    """How `explain` shows what a replay writes to a number in state."""
    return repr(value) if where is None else "(its value at the call, as the call changed it)"


def _write_numbers(writes: list, args, kwargs) -> None:
    """A replay's writes to the numbers in state its traced call changed (a step counter): each
    new value computed from the values the places held when the call began, then written."""
    values = [value if where is None else evaluate(where, args, kwargs)
              for _, _, where, value in writes]
    for (_, write, _, _), value in zip(writes, values):
        write(value)


def _replay_counters(entry, program: TracedProgram, lifted: dict, writes: list) -> None:
    """Make `entry` (a `CompiledEntry`) read the numbers in state it lifted (`lifted`: place ->
    (guard, type)) at run time: each place guarded by the number's type alone (its value is a
    graph input), and written by each replay as its traced call left it (`_write_numbers`)."""
    entry.guards = [g for g in entry.guards if getattr(g.read, "at", None) not in lifted]
    entry.guards += [guards.Guard(g.source, g.read, "type", kind, g.lazy, g.place)
                     for g, kind in lifted.values()]
    program.number_writes = writes


def _holds_proxy(x, depth: int = 4) -> bool:
    """Whether a SymbolicNumber is in `x`: its containers' items and its objects' attributes,
    `depth` levels down (a returned namedtuple, dataclass or object holding one)."""
    if type(x) is SymbolicNumber:
        return True
    if depth == 0 or isinstance(x, (Tensor, str, bytes, type)):
        return False
    if isinstance(x, dict):
        return any(_holds_proxy(v, depth - 1) for v in x.values())
    if isinstance(x, (tuple, list, set, frozenset)):
        return any(_holds_proxy(v, depth - 1) for v in x)
    fields = getattr(x, "__dict__", None)
    return isinstance(fields, dict) and any(_holds_proxy(v, depth - 1) for v in fields.values())


def _without_proxies(tree):
    """`tree` (a result) with each SymbolicNumber in its tuples, lists and dicts as its
    number; `tree` itself when it holds none."""
    if type(tree) is SymbolicNumber:
        return tree.value
    if type(tree) in (tuple, list) or isinstance(tree, tuple) and hasattr(tree, "_make"):
        items = [_without_proxies(x) for x in tree]
        if all(a is b for a, b in zip(items, tree)):
            return tree
        return type(tree)._make(items) if hasattr(tree, "_make") else type(tree)(items)
    if type(tree) is dict:
        items = {k: _without_proxies(v) for k, v in tree.items()}
        return tree if all(items[k] is v for k, v in tree.items()) else items
    return tree
