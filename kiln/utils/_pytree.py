"""`torch.utils._pytree` for kiln: nested containers ("pytrees") flattened to a list of leaves
and a `TreeSpec` that rebuilds them.

Nodes are tuples, lists, dicts (in insertion order), OrderedDicts, defaultdicts, deques,
namedtuples and struct sequences (kiln.return_types), plus any type given to
`register_pytree_node`; everything else, None included, is a leaf, as in PyTorch's Python
pytree. `tree_flatten_with_path` names each leaf by its key path (`keystr`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable, NamedTuple

__all__ = ["TreeSpec", "LeafSpec", "register_pytree_node", "tree_flatten", "tree_unflatten",
           "tree_leaves", "tree_structure", "tree_map", "tree_map_", "tree_map_only",
           "tree_map_only_", "tree_all", "tree_any", "tree_all_only", "tree_any_only",
           "tree_flatten_with_path", "tree_leaves_with_path", "tree_map_with_path", "keystr",
           "SequenceKey", "MappingKey", "GetAttrKey", "is_namedtuple", "treespec_pprint"]


class _Node(NamedTuple):
    flatten: Callable          # obj -> (children, context)
    unflatten: Callable        # (children, context) -> obj
    keys: Callable | None      # (obj, context) -> key entries of the children


SUPPORTED_NODES: dict[type, _Node] = {}


def register_pytree_node(cls: type, flatten_fn: Callable, unflatten_fn: Callable, *,
                         serialized_type_name: str | None = None,
                         to_dumpable_context=None, from_dumpable_context=None,
                         flatten_with_keys_fn: Callable | None = None) -> None:
    """Make `cls` a node: `flatten_fn(obj) -> (children, context)` and
    `unflatten_fn(children, context) -> obj`."""
    if cls in SUPPORTED_NODES:
        raise ValueError(f"{cls} is already registered as pytree node.")
    keys = None
    if flatten_with_keys_fn is not None:
        keys = lambda obj, ctx: [k for k, _ in flatten_with_keys_fn(obj)[0]]  # noqa: E731
    SUPPORTED_NODES[cls] = _Node(flatten_fn, unflatten_fn, keys)


# ----------------------------------------------------------------------------- key paths

@dataclasses.dataclass(frozen=True)
class SequenceKey:
    idx: int

    def __str__(self) -> str:
        return f"[{self.idx!r}]"

    def get(self, sequence):
        return sequence[self.idx]


@dataclasses.dataclass(frozen=True)
class MappingKey:
    key: Any

    def __str__(self) -> str:
        return f"[{self.key!r}]"

    def get(self, mapping):
        return mapping[self.key]


@dataclasses.dataclass(frozen=True)
class GetAttrKey:
    name: str

    def __str__(self) -> str:
        return f".{self.name}"

    def get(self, obj):
        return getattr(obj, self.name)


def keystr(kp: tuple) -> str:
    return "".join(str(k) for k in kp)


# ----------------------------------------------------------------------------- built-in nodes

def is_namedtuple(obj) -> bool:
    cls = obj if isinstance(obj, type) else type(obj)
    return issubclass(cls, tuple) and hasattr(cls, "_fields") and hasattr(cls, "_make")


def _is_structseq(obj) -> bool:
    cls = type(obj)
    return (issubclass(cls, tuple) and hasattr(cls, "n_fields")
            and hasattr(cls, "n_sequence_fields"))


def _sequence_keys(obj, ctx) -> list:
    return [SequenceKey(i) for i in range(len(obj))]


def _mapping_keys(obj, ctx) -> list:
    return [MappingKey(k) for k in (ctx if isinstance(ctx, list) else ctx[1])]


register_pytree_node(tuple, lambda t: (list(t), None), lambda c, _: tuple(c))
register_pytree_node(list, lambda t: (list(t), None), lambda c, _: list(c))
register_pytree_node(dict, lambda d: (list(d.values()), list(d)),
                     lambda c, keys: dict(zip(keys, c)))
register_pytree_node(collections.OrderedDict, lambda d: (list(d.values()), list(d)),
                     lambda c, keys: collections.OrderedDict(zip(keys, c)))
register_pytree_node(collections.defaultdict,
                     lambda d: (list(d.values()), [d.default_factory, list(d)]),
                     lambda c, ctx: collections.defaultdict(ctx[0], zip(ctx[1], c)))
register_pytree_node(collections.deque, lambda d: (list(d), d.maxlen),
                     lambda c, maxlen: collections.deque(c, maxlen=maxlen))
SUPPORTED_NODES[tuple] = SUPPORTED_NODES[tuple]._replace(keys=_sequence_keys)
SUPPORTED_NODES[list] = SUPPORTED_NODES[list]._replace(keys=_sequence_keys)
SUPPORTED_NODES[collections.deque] = SUPPORTED_NODES[collections.deque]._replace(
    keys=_sequence_keys)
for _cls in (dict, collections.OrderedDict):
    SUPPORTED_NODES[_cls] = SUPPORTED_NODES[_cls]._replace(keys=_mapping_keys)
SUPPORTED_NODES[collections.defaultdict] = SUPPORTED_NODES[collections.defaultdict]._replace(
    keys=_mapping_keys)

_NAMEDTUPLE = _Node(lambda t: (list(t), type(t)), lambda c, cls: cls(*c),
                    lambda obj, cls: [GetAttrKey(f) for f in cls._fields])
_STRUCTSEQ = _Node(lambda t: (list(t), type(t)), lambda c, cls: cls(c),
                   lambda obj, cls: [SequenceKey(i) for i in range(len(obj))])


def _node_of(obj) -> tuple[Any, _Node] | None:
    """(the spec's type, its node) for a container, None for a leaf."""
    cls = type(obj)
    node = SUPPORTED_NODES.get(cls)
    if node is not None:
        return cls, node
    if is_namedtuple(obj):
        return "namedtuple", _NAMEDTUPLE
    if _is_structseq(obj):
        return "structseq", _STRUCTSEQ
    return None


# ----------------------------------------------------------------------------- TreeSpec

class TreeSpec:
    """The shape of a pytree: its node type, context (dict keys, namedtuple class) and
    children's specs; a leaf is `LeafSpec()`."""

    def __init__(self, type, context, children_specs: list):
        self.type, self.context, self.children_specs = type, context, list(children_specs)
        self.num_leaves = sum(c.num_leaves for c in self.children_specs)
        self.num_nodes = 1 + sum(c.num_nodes for c in self.children_specs)
        self.num_children = len(self.children_specs)

    def is_leaf(self) -> bool:
        return False

    def _node(self) -> _Node:
        if self.type == "namedtuple":
            return _NAMEDTUPLE
        if self.type == "structseq":
            return _STRUCTSEQ
        return SUPPORTED_NODES[self.type]

    def unflatten(self, leaves: Iterable) -> Any:
        return tree_unflatten(leaves, self)

    def __eq__(self, other) -> bool:
        return (isinstance(other, TreeSpec) and not other.is_leaf()
                and self.type == other.type and self.context == other.context
                and self.children_specs == other.children_specs)

    def __hash__(self):
        return hash((str(self.type), self.num_leaves, self.num_nodes))

    def __repr__(self, indent: int = 0) -> str:
        name = self.type if isinstance(self.type, str) else self.type.__name__
        context = self.context.__name__ if isinstance(self.context, type) else self.context
        head = f"TreeSpec({name}, {context}, ["
        children = ",\n".join(" " * (indent + 2) + c.__repr__(indent + 2)
                              for c in self.children_specs)
        if self.children_specs and all(c.is_leaf() for c in self.children_specs):
            return head + ", ".join("*" for _ in self.children_specs) + "])"
        return head + ("\n" + children if children else "") + "])"


class LeafSpec(TreeSpec):
    def __init__(self):
        super().__init__(None, None, [])
        self.num_nodes, self.num_leaves = 1, 1

    def is_leaf(self) -> bool:
        return True

    def __eq__(self, other) -> bool:
        return isinstance(other, TreeSpec) and other.is_leaf()

    def __hash__(self):
        return 0

    def __repr__(self, indent: int = 0) -> str:
        return "*"


def treespec_pprint(spec: TreeSpec) -> str:
    return repr(spec)


# ----------------------------------------------------------------------------- flatten

def _leaf_pred(is_leaf):
    return (lambda x: False) if is_leaf is None else is_leaf


def tree_flatten(tree, is_leaf: Callable | None = None) -> tuple[list, TreeSpec]:
    """(the leaves in order, the spec that rebuilds `tree` from them)."""
    leaves: list = []
    return leaves, _flatten_into(tree, leaves, _leaf_pred(is_leaf))


def _flatten_into(obj, leaves: list, stop) -> TreeSpec:
    # (module-level functions here: a recursive closure is a reference cycle, which would
    # keep the leaves alive until the garbage collector ran)
    found = None if stop(obj) else _node_of(obj)
    if found is None:
        leaves.append(obj)
        return LeafSpec()
    kind, node = found
    children, context = node.flatten(obj)
    return TreeSpec(kind, context, [_flatten_into(c, leaves, stop) for c in children])


def tree_unflatten(leaves: Iterable, treespec: TreeSpec) -> Any:
    """The pytree `treespec` describes, with `leaves` in its leaves' places."""
    if not isinstance(treespec, TreeSpec):
        raise TypeError(f"tree_unflatten(leaves, treespec): Expected `treespec` to be instance "
                        f"of TreeSpec but got item of type {type(treespec)}.")
    leaves = list(leaves)
    if len(leaves) != treespec.num_leaves:
        raise ValueError(f"treespec.unflatten(leaves): `leaves` has length {len(leaves)} but "
                         f"the spec refers to a pytree that holds {treespec.num_leaves} "
                         f"items ({treespec}).")
    return _build(treespec, iter(leaves))


def _build(spec: TreeSpec, it):
    if spec.is_leaf():
        return next(it)
    return spec._node().unflatten([_build(c, it) for c in spec.children_specs], spec.context)


def tree_leaves(tree, is_leaf: Callable | None = None) -> list:
    return tree_flatten(tree, is_leaf)[0]


def tree_structure(tree, is_leaf: Callable | None = None) -> TreeSpec:
    return tree_flatten(tree, is_leaf)[1]


def tree_map(func: Callable, tree, *rests, is_leaf: Callable | None = None):
    """`tree` with `func` applied to every leaf (with the matching leaves of `rests`, which
    must have `tree`'s structure)."""
    leaves, spec = tree_flatten(tree, is_leaf)
    others = [spec_leaves(r, spec, is_leaf) for r in rests]
    return tree_unflatten([func(*xs) for xs in zip(leaves, *others)], spec)


def spec_leaves(tree, spec: TreeSpec, is_leaf=None) -> list:
    leaves, other = tree_flatten(tree, is_leaf)
    if other != spec:
        raise ValueError(f"Tree structure mismatch:\n{other}\nvs.\n{spec}")
    return leaves


def tree_map_(func: Callable, tree, *rests, is_leaf: Callable | None = None):
    """`func` called on every leaf for its effect; returns `tree`."""
    leaves, spec = tree_flatten(tree, is_leaf)
    others = [spec_leaves(r, spec, is_leaf) for r in rests]
    for xs in zip(leaves, *others):
        func(*xs)
    return tree


def _only(types, func: Callable) -> Callable:
    types = tuple(types) if isinstance(types, (tuple, list)) else types
    return lambda x: func(x) if isinstance(x, types) else x


def tree_map_only(type_or_types, func: Callable, tree, is_leaf: Callable | None = None):
    """`func` applied to the leaves that are instances of `type_or_types`; others kept."""
    return tree_map(_only(type_or_types, func), tree, is_leaf=is_leaf)


def tree_map_only_(type_or_types, func: Callable, tree, is_leaf: Callable | None = None):
    return tree_map_(_only(type_or_types, func), tree, is_leaf=is_leaf)


def tree_all(pred: Callable, tree, is_leaf: Callable | None = None) -> bool:
    return all(map(pred, tree_leaves(tree, is_leaf)))


def tree_any(pred: Callable, tree, is_leaf: Callable | None = None) -> bool:
    return any(map(pred, tree_leaves(tree, is_leaf)))


def tree_all_only(type_or_types, pred: Callable, tree, is_leaf=None) -> bool:
    return all(pred(x) for x in tree_leaves(tree, is_leaf) if isinstance(x, type_or_types))


def tree_any_only(type_or_types, pred: Callable, tree, is_leaf=None) -> bool:
    return any(pred(x) for x in tree_leaves(tree, is_leaf) if isinstance(x, type_or_types))


# ----------------------------------------------------------------------------- key paths

def tree_flatten_with_path(tree, is_leaf: Callable | None = None) -> tuple[list, TreeSpec]:
    """([(key path, leaf), ...], spec): each leaf with the keys that reach it."""
    out: list = []
    _flatten_with_path_into(tree, (), out, _leaf_pred(is_leaf))
    return out, tree_structure(tree, is_leaf)


def _flatten_with_path_into(obj, path: tuple, out: list, stop) -> None:
    found = None if stop(obj) else _node_of(obj)
    if found is None:
        out.append((path, obj))
        return
    _, node = found
    children, context = node.flatten(obj)
    if node.keys is None:
        raise ValueError(f"cannot give key paths under {type(obj).__name__}: it was "
                         "registered without flatten_with_keys_fn")
    for key, child in zip(node.keys(obj, context), children):
        _flatten_with_path_into(child, path + (key,), out, stop)


def tree_leaves_with_path(tree, is_leaf: Callable | None = None) -> list:
    return tree_flatten_with_path(tree, is_leaf)[0]


def tree_map_with_path(func: Callable, tree, *rests, is_leaf: Callable | None = None):
    """`func(key_path, leaf, *other_leaves)` at every leaf."""
    pairs, spec = tree_flatten_with_path(tree, is_leaf)
    others = [spec_leaves(r, spec, is_leaf) for r in rests]
    return tree_unflatten([func(kp, x, *xs) for (kp, x), *xs in zip(pairs, *others)], spec)
