"""vmap's `in_dims` prefixes over nested arguments (`broadcast_prefix`); the containers
themselves are kiln.utils._pytree's (torch.utils._pytree), re-exported here for kiln.func."""

from __future__ import annotations

from kiln.utils._pytree import TreeSpec, tree_flatten, tree_map, tree_unflatten  # noqa: F401


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
