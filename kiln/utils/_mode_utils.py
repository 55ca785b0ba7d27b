"""`kiln.utils._mode_utils` (torch.utils._mode_utils): `no_dispatch()`."""

from __future__ import annotations

import contextlib

from kiln.ops import dispatch_mode

__all__ = ["no_dispatch"]


@contextlib.contextmanager
def no_dispatch():
    """`with no_dispatch():` neither TorchDispatchModes nor Tensor subclasses'
    `__torch_dispatch__` see the ops inside: they run on the tensors' own data (a subclass
    with data of its own computes there, as a plain tensor; a wrapper has none to compute on)."""
    dispatch_mode.STATE.no_dispatch += 1
    try:
        yield
    finally:
        dispatch_mode.STATE.no_dispatch -= 1
