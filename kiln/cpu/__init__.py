"""`kiln.cpu`: torch.cpu's device probes (the CPU is always there) and its `amp` submodule."""

from __future__ import annotations


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    return True


def device_count() -> int:
    return 1


def current_device() -> str:
    return "cpu"


def set_device(device) -> None:
    """Nothing to select: there is one CPU device, as in torch."""


def synchronize(device=None) -> None:
    """CPU work is done when its call returns: nothing to wait for."""


from kiln.cpu import amp  # noqa: E402,F401  (torch.cpu.amp)
