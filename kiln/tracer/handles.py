"""`RemovableHandle`: what every register_*hook returns (torch.utils.hooks' class)."""

from __future__ import annotations

import weakref
from collections import OrderedDict


class RemovableHandle:
    """Takes a hook away again: `remove()` deletes the handle's `id` from the hooks dict it
    was registered in (and from each `extra_dict`, where the registry keeps flags about the
    hook); removing twice, or after the dict is gone, does nothing. `with handle:` removes it
    at the block's end. The handle holds the dicts weakly, as PyTorch's does, and pickles as
    (the hooks dict, id, the extra dicts)."""

    next_id: int = 0

    def __init__(self, hooks_dict, *, extra_dict=None) -> None:
        self.hooks_dict_ref = weakref.ref(hooks_dict)
        self.id = RemovableHandle.next_id
        RemovableHandle.next_id += 1
        extras = extra_dict if isinstance(extra_dict, (list, tuple)) else \
            () if extra_dict is None else (extra_dict,)
        self.extra_dict_ref = tuple(weakref.ref(d) for d in extras)

    def remove(self) -> None:
        for ref in (self.hooks_dict_ref,) + self.extra_dict_ref:
            registry = ref()
            if registry is not None and self.id in registry:
                del registry[self.id]

    def __getstate__(self) -> tuple:
        return (self.hooks_dict_ref(), self.id, tuple(ref() for ref in self.extra_dict_ref))

    def __setstate__(self, state: tuple) -> None:
        # a dict that was gone when pickled: a reference that is dead already
        self.hooks_dict_ref = weakref.ref(OrderedDict() if state[0] is None else state[0])
        self.id = state[1]
        RemovableHandle.next_id = max(RemovableHandle.next_id, self.id + 1)
        extras = state[2] if len(state) > 2 else ()
        self.extra_dict_ref = tuple(weakref.ref(d) for d in extras if d is not None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class DroppingHandle(RemovableHandle):
    """A RemovableHandle for a hook kept outside a dict (a tensor's or a node's tuple of hooks,
    which backward reads as it is): `remove()` calls `drop` once. PyTorch's own
    register_multi_grad_hook handle is such a subclass. Unpickled, it removes nothing, as an
    unpickled PyTorch handle removes from a copy of the dict."""

    def __init__(self, drop) -> None:
        super().__init__(OrderedDict())     # a reference already dead: no dict holds the hook
        self._drop = drop

    def remove(self) -> None:
        drop, self._drop = self._drop, None
        if drop is not None:
            drop()

    def __setstate__(self, state: tuple) -> None:
        super().__setstate__(state)
        self._drop = None

