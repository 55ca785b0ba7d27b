"""`kiln.accelerator`: the device-agnostic probes of torch.accelerator (CUDA is kiln's one)."""

from __future__ import annotations

from kiln.runtime.device import Device, cuda_is_available


def is_available() -> bool:
    return cuda_is_available()


def device_count() -> int:
    from kiln import cuda
    return cuda.device_count()


def current_accelerator(check_available: bool = False) -> Device | None:
    """The accelerator's device type (`cuda`), or None when there is none."""
    return Device("cuda") if cuda_is_available() else None


def current_device_index() -> int:
    return 0


def synchronize(device=None) -> None:
    from kiln import cuda
    cuda.synchronize()
