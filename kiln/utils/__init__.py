"""Utilities beside the tensor core: data loading (`kiln.utils.data`)."""

import copyreg

from kiln import Tensor

from kiln.utils import data  # noqa: F401
from kiln.utils import checkpoint  # noqa: F401  (torch.utils.checkpoint)
from kiln.utils import benchmark  # noqa: F401  (torch.utils.benchmark's Timer)
from kiln.utils import _pytree, hooks  # noqa: F401  (torch.utils._pytree, torch.utils.hooks)
from kiln.utils import deterministic, dlpack  # noqa: F401
from kiln.utils import flop_counter  # noqa: F401  (torch.utils.flop_counter)


def swap_tensors(t1, t2) -> None:
    """Swap the contents of two tensors (their class, values, attributes and autograd state),
    each keeping its identity: every reference to `t1` now sees what `t2` was, and the other
    way round (torch.utils.swap_tensors)."""
    if not isinstance(t1, Tensor) or not isinstance(t2, Tensor):
        raise TypeError(f"swap_tensors expects two tensors, got {type(t1).__name__} and "
                        f"{type(t2).__name__}")
    slots = set(copyreg._slotnames(type(t1)))
    if slots != set(copyreg._slotnames(type(t2))):
        raise RuntimeError(f"Cannot swap t1 and t2 if they have different slots "
                           f"({type(t1).__name__} and {type(t2).__name__})")
    slots.discard("__weakref__")
    t1.__class__, t2.__class__ = t2.__class__, t1.__class__
    if hasattr(t1, "__dict__") and hasattr(t2, "__dict__"):
        t1.__dict__, t2.__dict__ = t2.__dict__, t1.__dict__
    missing = object()
    for slot in slots:
        a, b = getattr(t1, slot, missing), getattr(t2, slot, missing)
        for target, value in ((t1, b), (t2, a)):
            if value is missing:
                if hasattr(target, slot):
                    delattr(target, slot)
            else:
                setattr(target, slot, value)
