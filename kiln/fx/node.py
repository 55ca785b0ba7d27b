"""`kiln.fx.Node`: one call in an fx Graph (placeholder, get_attr, call_function, call_method,
call_module or output), its arguments, its users, and torch.fx's helpers over arguments."""

from __future__ import annotations

import builtins
import types
from typing import Any, Callable

_SIDE_EFFECTFUL: set = set()


def has_side_effect(fn: Callable) -> Callable:
    """Mark `fn` as impure: dead-code elimination keeps its call_function nodes although
    nothing reads their value (torch.fx.has_side_effect)."""
    _SIDE_EFFECTFUL.add(fn)
    return fn


OPCODES = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
Target = Any
Argument = Any


def map_aggregate(a: Argument, fn: Callable[[Argument], Argument]) -> Argument:
    """`fn` applied to every leaf of a nested structure of tuples, lists, dicts and slices."""
    if isinstance(a, tuple):
        mapped = tuple(map_aggregate(e, fn) for e in a)
        return type(a)(*mapped) if hasattr(a, "_fields") else mapped      # a NamedTuple
    if isinstance(a, list):
        return [map_aggregate(e, fn) for e in a]
    if isinstance(a, dict):
        return {k: map_aggregate(v, fn) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(map_aggregate(a.start, fn), map_aggregate(a.stop, fn),
                     map_aggregate(a.step, fn))
    return fn(a)


def map_arg(a: Argument, fn: Callable[["Node"], Argument]) -> Argument:
    """`fn` applied to every Node inside argument structure `a` (other leaves kept)."""
    if not callable(fn):
        raise TypeError("kiln.fx.map_arg(a, fn): fn must be a callable")
    return map_aggregate(a, lambda x: fn(x) if isinstance(x, Node) else x)


def _input_nodes(args: tuple, kwargs: dict) -> dict:
    found: dict = {}
    map_arg((args, kwargs), lambda n: found.setdefault(n))
    return found


def _public_namespaces() -> list:
    """kiln's public function namespaces, in the order a function's printed name is looked for
    (the first that holds it under its own name), as torch prints `torch.relu`."""
    import kiln
    import kiln.nn.functional
    return [kiln, kiln.nn.functional, kiln.linalg, kiln.special, kiln.fft]


def qualified_name(fn: Callable) -> str:
    """The dotted name a function is printed and imported by: `kiln.relu`,
    `kiln.nn.functional.gelu`, `operator.add`, `builtins.getattr`; else `module.name`."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None) or ""
    if module == "builtins" or getattr(builtins, name, None) is fn:
        return name if module != "_operator" else f"operator.{name}"
    if module == "_operator":
        return f"operator.{name}"
    if module.startswith("kiln"):
        spaces = _public_namespaces()
        if module.startswith("kiln.nn"):
            spaces.insert(0, spaces.pop(1))         # F.gelu prints as kiln.nn.functional.gelu
        for space in spaces:
            found = getattr(space, name, None)
            # (while a tracer records, the namespace holds fn's proxy-aware wrapper)
            if getattr(found, "__fx_original__", found) is fn:
                return f"{space.__name__}.{name}"
        for space in spaces:            # an alias bound under another name (kiln.arcsin)
            for attr, found in vars(space).items():
                if not attr.startswith("_") and getattr(found, "__fx_original__", found) is fn:
                    return f"{space.__name__}.{attr}"
    return f"{module}.{name}" if module else name


def pretty_target(target: Target) -> str:
    """A target as `str(graph)` prints it (torch's Node._pretty_print_target)."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None)
    name = getattr(target, "__name__", None)
    if module == "builtins" and name is not None:
        return f"builtins.{name}"
    if module == "_operator" and name is not None:
        return f"operator.{name}"
    return qualified_name(target)


def type_repr(obj: Any) -> str:
    """A type annotation as fx prints it: `int`, `module.Class`, else repr."""
    if isinstance(obj, type) and not isinstance(obj, types.GenericAlias):
        return obj.__qualname__ if obj.__module__ == "builtins" else \
            f"{obj.__module__}.{obj.__qualname__}"
    if obj is ...:
        return "..."
    if isinstance(obj, types.FunctionType):
        return obj.__name__
    return repr(obj)


def format_arg(arg: Argument) -> str:
    if isinstance(arg, list):
        return "[" + ", ".join(format_arg(a) for a in arg) + "]"
    if isinstance(arg, tuple):
        items = ", ".join(format_arg(a) for a in arg)
        return f"({items}{',' if len(arg) == 1 else ''})"
    if isinstance(arg, dict):
        return "{" + ", ".join(f"{k}: {format_arg(v)}" for k, v in arg.items()) + "}"
    if isinstance(arg, Node):
        return "%" + str(arg)
    return str(arg)


class Node:
    """One operation of a Graph. `args`/`kwargs` may hold other Nodes (its inputs); `users`
    maps each Node that reads this one to None; `meta` is free for passes (`tensor_meta`)."""

    def __init__(self, graph, name: str, op: str, target: Target, args: tuple, kwargs: dict,
                 return_type: Any = None) -> None:
        if op not in OPCODES:
            raise ValueError(f"kiln.fx.Node: unknown op {op!r}; expected one of {OPCODES}")
        if op == "call_function" and not callable(target):
            raise ValueError(f"kiln.fx.Node {name}: a call_function target must be callable, "
                             f"got {target!r}")
        if op in ("placeholder", "get_attr", "call_method", "call_module", "output") and \
                not isinstance(target, str):
            raise ValueError(f"kiln.fx.Node {name}: a {op} target must be a string, got "
                             f"{target!r}")
        self.graph = graph
        self.name = name
        self.op = op
        self.target = target
        self._input_nodes: dict = {}
        self._args: tuple = ()
        self._kwargs: dict = {}
        self.users: dict = {}
        self.type = return_type
        self.meta: dict = {}
        self._prev: Node = self
        self._next: Node = self
        self._erased = False
        self.__update_args_kwargs(args, kwargs)

    # ------------------------------------------------------------------ arguments
    @property
    def args(self) -> tuple:
        return self._args

    @args.setter
    def args(self, value: tuple) -> None:
        self.__update_args_kwargs(value, self._kwargs)

    @property
    def kwargs(self) -> dict:
        return self._kwargs

    @kwargs.setter
    def kwargs(self, value: dict) -> None:
        self.__update_args_kwargs(self._args, value)

    @property
    def all_input_nodes(self) -> list:
        """The Nodes this one reads, in the order they first appear in args then kwargs."""
        return list(self._input_nodes)

    def __update_args_kwargs(self, args: tuple, kwargs: dict) -> None:
        for old in self._input_nodes:
            old.users.pop(self, None)
        self._args = tuple(args)
        self._kwargs = dict(kwargs)
        self._input_nodes = _input_nodes(self._args, self._kwargs)
        for new in self._input_nodes:
            new.users.setdefault(self)

    def update_arg(self, idx: int, arg: Argument) -> None:
        args = list(self._args)
        args[idx] = arg
        self.args = tuple(args)

    def update_kwarg(self, key: str, arg: Argument) -> None:
        self.kwargs = {**self._kwargs, key: arg}

    def replace_input_with(self, old_input: "Node", new_input: "Node") -> None:
        """Every use of `old_input` in this node's args and kwargs becomes `new_input`."""
        def swap(n: Node):
            return new_input if n is old_input else n
        self.__update_args_kwargs(map_arg(self._args, swap), map_arg(self._kwargs, swap))

    def replace_all_uses_with(self, replace_with: "Node",
                              delete_user_cb: Callable[["Node"], bool] = lambda user: True,
                              *, propagate_meta: bool = False) -> list:
        """Every node that reads this one reads `replace_with` instead (those `delete_user_cb`
        accepts); returns the users changed."""
        if propagate_meta:
            for k, v in self.meta.items():
                replace_with.meta.setdefault(k, v)
        changed = []
        for user in list(self.users):
            if not delete_user_cb(user):
                continue
            user.replace_input_with(self, replace_with)
            changed.append(user)
        return changed

    # ------------------------------------------------------------------ order
    @property
    def next(self) -> "Node":
        return self._next

    @property
    def prev(self) -> "Node":
        return self._prev

    def prepend(self, x: "Node") -> None:
        """Move node `x` to just before this one in the graph."""
        if x is self:
            return
        x._remove_from_list()
        p = self._prev
        p._next, x._prev, x._next, self._prev = x, p, self, x

    def append(self, x: "Node") -> None:
        """Move node `x` to just after this one in the graph."""
        self._next.prepend(x)

    def _remove_from_list(self) -> None:
        # the node keeps its own links: a loop over graph.nodes that erases the node it stands
        # on goes on to the node that followed it
        p, n = self._prev, self._next
        p._next, n._prev = n, p

    # ------------------------------------------------------------------ printing
    @property
    def stack_trace(self) -> str | None:
        return self.meta.get("stack_trace")

    def is_impure(self) -> bool:
        """Whether dead-code elimination must keep this node although nothing reads it."""
        if self.op in ("placeholder", "output"):
            return True
        if self.op == "call_method" and isinstance(self.target, str):
            return self.target.endswith("_") and not self.target.endswith("__")  # in place
        if self.op == "call_module":
            return False
        if self.op == "call_function":
            if self.target in _SIDE_EFFECTFUL:
                return True
            name = getattr(self.target, "__name__", "")
            return name.startswith("_assert") or (name.endswith("_") and not
                                                  name.endswith("__") and name != "and_"
                                                  and name != "or_")
        return False

    def format_node(self) -> str:
        """One line of `str(graph)`, as torch.fx prints it."""
        users = (f"{type_repr(self.type)} " if self.type is not None else "") + \
            f"[num_users={len(self.users)}]"
        if self.op == "placeholder":
            default = f"(default={self.args[0]})" if self.args else ""
            return f"%{self.name} : {users} = placeholder[target={self.target}]{default}"
        if self.op == "get_attr":
            return f"%{self.name} : {users} = get_attr[target={pretty_target(self.target)}]"
        if self.op == "output":
            return f"return {self.args[0]}"
        return (f"%{self.name} : {users} = {self.op}[target={pretty_target(self.target)}]"
                f"(args = {format_arg(self.args)}, kwargs = {format_arg(self.kwargs)})")

    def __repr__(self) -> str:
        return self.name

