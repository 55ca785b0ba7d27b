"""Nested containers of tensors as flat lists and back (torch.utils._pytree's subset that
`kiln.func` and `kiln.utils.checkpoint` need): tuples, lists, dicts and namedtuples are
containers; everything else, None included, is a leaf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class TreeSpec:
    """The shape of a nested container: `kind` is "leaf", "tuple", "namedtuple", "list" or
    "dict"; `keys` are a dict's keys in order."""

    kind: str
    type: type | None = None
    keys: tuple = ()
    children: tuple = ()

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)


LEAF = TreeSpec("leaf")


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def tree_flatten(tree) -> tuple[list, TreeSpec]:
    """The leaves of `tree` in order, and the spec `tree_unflatten` rebuilds it from."""
    leaves: list = []
    return leaves, _flatten(tree, leaves)


def _flatten(tree, leaves: list) -> TreeSpec:
    if _is_namedtuple(tree):
        return TreeSpec("namedtuple", type(tree), (),
                        tuple(_flatten(v, leaves) for v in tree))
    if isinstance(tree, tuple):
        return TreeSpec("tuple", type(tree), (), tuple(_flatten(v, leaves) for v in tree))
    if isinstance(tree, list):
        return TreeSpec("list", type(tree), (), tuple(_flatten(v, leaves) for v in tree))
    if isinstance(tree, dict):
        keys = tuple(tree.keys())
        return TreeSpec("dict", type(tree), keys, tuple(_flatten(tree[k], leaves) for k in keys))
    leaves.append(tree)
    return LEAF


def tree_unflatten(leaves, spec: TreeSpec):
    """The container `spec` describes, holding `leaves` in order."""
    leaves = list(leaves)
    if len(leaves) != spec.num_leaves:
        raise ValueError(f"tree_unflatten: the spec holds {spec.num_leaves} leaves, "
                         f"got {len(leaves)}")
    it = iter(leaves)
    return _build(spec, it)


def _build(spec: TreeSpec, it):
    if spec.kind == "leaf":
        return next(it)
    children = [_build(c, it) for c in spec.children]
    if spec.kind == "namedtuple":
        return spec.type(*children)
    if spec.kind == "tuple":
        return tuple(children) if spec.type is tuple else spec.type(children)
    if spec.kind == "list":
        return list(children) if spec.type is list else spec.type(children)
    out = spec.type() if spec.type is not dict else {}
    for k, v in zip(spec.keys, children):
        out[k] = v
    return out


def tree_map(fn: Callable[[Any], Any], tree):
    """`tree` with every leaf replaced by `fn(leaf)`."""
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([fn(x) for x in leaves], spec)


def broadcast_prefix(prefix, tree, what: str = "in_dims") -> list:
    """One value per leaf of `tree`, read from `prefix`: a container shaped like the top of
    `tree` whose leaves apply to whole subtrees (vmap's in_dims=(0, None), or {"w": 0} for a
    dict argument). Raises ValueError naming `what` when the shapes disagree."""
    out: list = []
    _broadcast(prefix, tree, out, what)
    return out


def _broadcast(prefix, tree, out: list, what: str) -> None:
    is_container = isinstance(prefix, (tuple, list, dict))
    if not is_container:
        out.extend([prefix] * tree_flatten(tree)[1].num_leaves)
        return
    if isinstance(prefix, dict):
        if not isinstance(tree, dict) or set(prefix) != set(tree):
            raise ValueError(f"{what}: the structure {_describe(prefix)} does not match the "
                             f"argument's {_describe(tree)}")
        for k in tree:
            _broadcast(prefix[k], tree[k], out, what)
        return
    if not isinstance(tree, (tuple, list)) or len(prefix) != len(tree):
        raise ValueError(f"{what}: the structure {_describe(prefix)} does not match the "
                         f"argument's {_describe(tree)}")
    for p, t in zip(prefix, tree):
        _broadcast(p, t, out, what)


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return f"dict with keys {list(obj)}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of length {len(obj)}"
    return type(obj).__name__
