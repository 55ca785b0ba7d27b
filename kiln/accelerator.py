"""`kiln.accelerator`: the device-agnostic probes of torch.accelerator (CUDA is kiln's one).

Without a GPU, what needs one (the current index, selecting one, synchronizing) raises
RuntimeError with torch's message; the probes answer False, 0 and None.
"""

from __future__ import annotations

from kiln.runtime.device import Device, cuda_is_available

NONE_AVAILABLE = "Cannot access accelerator device when none is available."


def _cuda():
    if not cuda_is_available():
        raise RuntimeError(NONE_AVAILABLE)
    from kiln import cuda
    return cuda


def is_available() -> bool:
    return cuda_is_available()


def device_count() -> int:
    from kiln import cuda
    return cuda.device_count()


def current_accelerator(check_available: bool = False) -> Device | None:
    """The accelerator's device type (`cuda`), or None when there is none."""
    return Device("cuda") if cuda_is_available() else None


def current_device_index() -> int:
    return _cuda().current_device()


current_device_idx = current_device_index       # torch's older name


def set_device_index(device, /) -> None:
    _cuda().set_device(device)


set_device_idx = set_device_index


class device_index:  # noqa: N801 (torch's name)
    """Context manager making device `device` current for its block; None changes nothing."""

    def __init__(self, device: int | None, /) -> None:
        self.idx, self.prev_idx = device, -1

    def __enter__(self) -> None:
        if self.idx is not None:
            self.prev_idx = current_device_index()
            set_device_index(self.idx)

    def __exit__(self, *exc_info) -> None:
        if self.idx is not None:
            set_device_index(self.prev_idx)


def synchronize(device=None, /) -> None:
    _cuda().synchronize()
