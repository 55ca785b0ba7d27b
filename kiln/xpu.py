"""`torch.xpu` as a PyTorch build without XPU support answers it: kiln runs on the CPU and on
NVIDIA GPUs only, so the probes say no device (`is_available()` is False, `device_count()` 0)
and what needs an XPU raises. Scripts pick their device with `elif torch.xpu.is_available():`.
"""

from __future__ import annotations

_NO_XPU = ("Torch not compiled with XPU enabled: kiln runs on the CPU and on NVIDIA GPUs "
           "(device 'cuda') only")


def is_available() -> bool:
    return False


def device_count() -> int:
    return 0


def is_initialized() -> bool:
    return False


def is_bf16_supported(including_emulation: bool = True) -> bool:
    return False


def memory_allocated(device=None) -> int:
    return 0


def empty_cache() -> None:
    """Nothing is cached: there is no XPU."""


def manual_seed(seed: int) -> None:
    """Ignored without an XPU, as PyTorch ignores it."""


def manual_seed_all(seed: int) -> None:
    """Ignored without an XPU, as PyTorch ignores it."""


def _needs_device(name: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"torch.xpu.{name}: {_NO_XPU}")
    refuse.__name__ = name
    return refuse


current_device = _needs_device("current_device")
set_device = _needs_device("set_device")
synchronize = _needs_device("synchronize")
get_device_name = _needs_device("get_device_name")
get_device_properties = _needs_device("get_device_properties")
