"""A compiled call's arguments as its guard key and guards see them: which parameters the
function reads, the tree of values it was given, tensors sharing memory, objects to guard."""

from __future__ import annotations

import dis
import inspect
import types

from kiln.compiler import guards
from kiln.compiler.numbers import _stored_proxies
from kiln.compiler.tracing import _plain_object, _referenced_objects
from kiln.tracer.symbolic_number import SymbolicNumber
from kiln.tracer.tensor import Tensor


# names a function's code may read its locals through, by a computed name or all at once
_READS_LOCALS = frozenset({"locals", "vars", "eval", "exec", "inspect", "sys", "traceback"})


def _unread_parameters(fn) -> tuple | None:
    """(positions in a call's arguments, keyword names) of the parameters `fn`'s code never
    reads: a number passed there (`training_step(batch, batch_idx)`) cannot change what the call
    computes, so the key holds no value for it. None when there are none, and for what runs
    other code on its arguments first (a Module's hooks, a partial, a `*args` wrapper)."""
    function = getattr(fn, "__func__", fn)
    code = getattr(function, "__code__", None)
    if not isinstance(function, types.FunctionType) or code is None or \
            code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return None
    if guards.global_names(code) & _READS_LOCALS:
        return None
    named = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    used = set(code.co_cellvars)
    for ins in dis.get_instructions(code):
        if ins.opname != "LOAD_GLOBAL" and ins.opname != "LOAD_ATTR":
            value = ins.argval
            used.update(value if isinstance(value, tuple) else (value,))
    unread = [i for i, name in enumerate(named) if name not in used]
    if not unread:
        return None
    shift = 1 if isinstance(fn, types.MethodType) else 0        # (its `self` is bound)
    positions = frozenset(i - shift for i in unread if shift <= i < code.co_argcount)
    return positions, frozenset(named[i] for i in unread)


def _unread_as_none(unread: tuple, args: tuple, kwargs: dict) -> tuple:
    """The arguments with each Python number (or string, None) at an unread parameter as None."""
    positions, names = unread
    args = tuple(None if i in positions and type(a) in guards.SCALARS else a
                 for i, a in enumerate(args))
    if kwargs:
        kwargs = {k: None if k in names and type(v) in guards.SCALARS else v
                  for k, v in kwargs.items()}
    return args, kwargs


class _TypeReach(guards._Reach):
    """`guards.code_reads`' walk of the code a call can run, noting code that names `type`."""

    def __init__(self, names: frozenset):
        super().__init__(names, False)
        self.names_type = False

    def code(self, code) -> None:
        super().code(code)
        self.names_type = self.names_type or "type" in guards.global_names(code)


def _type_reads(fn) -> str | None:
    """Why a number argument of `fn` is not lifted, or None: code the call can run names the
    builtin `type` (`type(lr) is float` tells a SymbolicNumber from a float, and no use of the
    proxy is seen), or cannot be looked through."""
    reads = guards.code_reads(fn)
    if reads.everything:
        return "the code it runs cannot be looked through"
    reach = _TypeReach(reads.names)
    reach.run([fn])
    if reach.everything:
        return "the code it runs cannot be looked through"
    return "the code it runs calls type()" if reach.names_type else None


def _parameter_names(fn) -> list:
    """The names of `fn`'s positional parameters as a call passes them (for graph inputs); of a
    Module, its forward's."""
    if getattr(fn, "__code__", None) is None and hasattr(fn, "forward"):
        fn = fn.forward
    try:
        return [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return []


def _unread_item(g: guards.Guard, reads: set) -> bool:
    """Whether `g` guards an item no code of the traced call read (`reads`: the places
    `hooks.note_item_read` was told of), of a container whose class tells every read of it."""
    owner, place = getattr(g.read, "owner", None), getattr(g.read, "at", None)
    return owner is not None and place is not None and place not in reads and \
        place[1] in getattr(type(owner), "_kiln_noted_keys", ())


def _put_back_numbers(placed: list, fn, args, kwargs) -> dict:
    """After a trace that read numbers in state as proxies (`placed`: [(guard, proxy)]): each
    place gets back a number (a derived proxy left there, `n + 1`, as its value), and so does
    any other place the function reaches where the call stored a proxy (`self.last = self.n`;
    that proxy counts as read, `_stored_proxies`). Returns {place: what the call left there}."""
    finals = {}
    for g, _ in placed:
        value = g.read()
        finals[g.read.at] = value
        if type(value) is SymbolicNumber:
            g.read.write(value.value)
    try:
        reached = guards.collect(fn, _object_arguments(args, kwargs)).guards + \
            guards.collect(None, _argument_roots(args, kwargs)).guards
    except Exception:       # (the walk before the call succeeded; the user's error goes first)
        reached = []
    _stored_proxies(reached)
    return finals


def _typed_tree(t, fields: frozenset | None = None):
    """A flatten tree with each constant tagged by type (2, 2.0 and True differ; so do 0.0
    and -0.0; NaN equals NaN), hashable when its constants are. Of a batch object, the fields
    that hold tensors and those named in `fields` (all when None). (Recursive as a function
    of its own: a recursive closure would be a reference cycle made on every call.)"""
    tag = t[0]
    if tag == "T" or tag == "S" or tag == "SC":   # a sparse tensor's size and flag/layout
        return t
    if tag == "R":                                # a batch object: its type and fields
        return ("R", t[1], tuple((k, _typed_tree(v, fields)) for k, v in t[2]
                                 if fields is None or k in fields or _holds_tensors(v)))
    if tag == "C":
        x = t[1]
        if type(x) in guards.SCALARS:
            return ("C", guards.scalar_key(x))
        try:
            hash(x)
        except TypeError:
            return ("C", type(x), id(x))
        return ("C", type(x), x) if not isinstance(x, tuple) else ("C", repr(x))
    if tag is dict:
        return (dict, tuple((guards.scalar_key(k) if type(k) in guards.SCALARS else k,
                             _typed_tree(v, fields)) for k, v in t[1]))
    return (tag, tuple(_typed_tree(v, fields) for v in t[1]))


def _holds_tensors(tree) -> bool:
    tag = tree[0]
    if tag in ("T", "S", "SC", "I", "R"):       # (a batch object holds one, or it is a constant)
        return True
    if tag == "C":
        return False
    return any(_holds_tensors(v) for _, v in tree[1]) if tag is dict else \
        any(_holds_tensors(v) for v in tree[1])


def _has_record(tree) -> bool:
    """Whether a (typed) argument tree holds a batch object."""
    if not isinstance(tree, tuple) or not tree:
        return False
    tag = tree[0]
    if tag == "R":
        return True
    if tag in ("T", "S", "SC", "I", "C"):
        return False
    return any(_has_record(v) for _, v in tree[1]) if tag is dict else \
        any(_has_record(v) for v in tree[1])


def _base(array):
    base = getattr(array, "base", None)
    return array if base is None else base


def _alias_pattern(leaves) -> tuple:
    """Which tensor arguments share memory: () when none does, else for each argument the index
    of the first argument with the same buffer."""
    if len(leaves) < 2:
        return ()
    ids = [id(_base(t._data)) for t in leaves]
    if len(set(ids)) == len(ids):
        return ()
    return tuple(ids.index(i) for i in ids)


def _grad_candidates(fn, args, kwargs, reachable: dict) -> list:
    """Every tensor requiring grad (or holding a `.grad`) the call can reach: the tensors `fn`
    names, and the parameters of the modules and optimizers it names or is passed (two levels
    into lists, tuples, dicts and plain objects: a trainer's model and optimizer).

    A gradient the call reads is bound to its owner's `.grad` of the moment (zero_grad() and
    backward replace it between calls), and which of them have a `.grad` at all is guarded:
    an optimizer step branches on `p.grad is None`."""
    found: dict = {}

    def add(t) -> None:
        if isinstance(t, Tensor) and (t.requires_grad or t.grad is not None):
            found.setdefault(id(t), t)

    def visit(obj, level: int) -> None:
        if hasattr(obj, "named_parameters") and hasattr(obj, "_parameters"):
            for _, p in obj.named_parameters():
                add(p)
        elif hasattr(obj, "param_groups") and hasattr(obj, "state"):
            for group in obj.param_groups:
                for p in group.get("params", ()):
                    add(p)
        elif isinstance(obj, (list, tuple)) and level > 0:
            for item in obj[:256]:
                visit(item, level - 1)
        elif isinstance(obj, dict) and level > 0:
            for item in list(obj.values())[:256]:
                visit(item, level - 1)
        elif level > 0 and _plain_object(obj):
            for item in list(vars(obj).values())[:256]:
                visit(item, level - 1)

    for t in reachable.values():
        add(t)
    for obj in list(_referenced_objects(fn).values()) + list(args) + list(kwargs.values()):
        visit(obj, 2)
    return list(found.values())


def _grad_presence(tensors: list) -> tuple:
    return tuple(t.grad is None for t in tensors)


def _own_attributes(leaves) -> tuple:
    """The argument tensors' own attributes (`x.scale`), for the key: a number by value, any
    other object by identity (`_object_arguments` makes it a guard root, for what it holds);
    () when none has any, as in most calls."""
    if not any(map(vars, leaves)):
        return ()
    return tuple(tuple((name, guards.scalar_key(v) if type(v) in guards.SCALARS else
                        (type(v), id(v))) for name, v in vars(t).items()) for t in leaves)


def _object_arguments(args, kwargs) -> list:
    """Guard roots for the objects passed as arguments (`self` of a compiled method, a module
    or a config), also inside the lists, tuples and dicts passed (`step([model, opt])`), and
    held in an argument tensor's own attributes (`x.meta`): the key holds them by identity,
    their guards hold what is inside."""
    found = []

    def visit(where: str, a, depth: int) -> None:
        if isinstance(a, Tensor):
            found.extend((f"{where}.{name}", guards.constant(v), v) for name, v in
                         vars(a).items() if type(v) not in guards.SCALARS)
            return
        if type(a) in guards.SCALARS:
            return
        if isinstance(a, (list, tuple, dict)):
            if depth < 4:
                items = a.items() if isinstance(a, dict) else enumerate(a)
                for k, v in items:
                    visit(f"{where}[{k!r}]", v, depth + 1)
            return
        found.append((where, guards.constant(a), a))
    for i, a in enumerate(list(args) + list(dict(kwargs).values())):
        visit(f"argument {i}", a, 0)
    return found


def _keyed_scalars(found: list, roots: list, records: list, fields, flags: dict) -> set:
    """The ids of the guards in `found` on a scalar field of a batch object passed as an argument
    that the guard key holds (`_typed_tree`: the value of the argument of each call, typed as a
    value guard types it), where the object is reached by no other path and the call does not
    set the field: the guard would read the object the trace was given, which a later call need
    not pass (a new batch holding the first one's value, after that one was changed, replays)."""
    batches = {id(r) for r in records}
    at_root = {where: obj for where, _, obj in roots if id(obj) in batches}
    elsewhere = {id(g.expected) for g in found if g.kind == "id" and g.source not in at_root}
    keyed = set()
    for g in found:
        where, _, name = g.source.rpartition(".")
        obj = at_root.get(where)
        if obj is not None and g.kind == "value" and id(obj) not in elsewhere and \
                (fields is None or name in fields) and name in vars(obj) and \
                getattr(g.read, "at", None) not in flags:
            keyed.add(id(g))
    return keyed


def _argument_roots(args, kwargs) -> list:
    """Guard roots for the containers, objects and tensors among the arguments: a call that
    appends to a list it was passed, or sets an attribute on a tensor it was passed, changes
    Python state too."""
    found = []
    for i, a in enumerate(list(args) + list(kwargs.values())):
        if type(a) not in guards.SCALARS:
            found.append((f"argument {i}", guards.constant(a), a))
    return found
