"""`torch.cpu.amp`: the older, deprecated spellings of autocast and GradScaler for "cpu"
(kiln.amp holds them; each warns as torch's does)."""

from kiln.amp import _CpuAutocast as autocast, _CpuGradScaler as GradScaler  # noqa: F401

__all__ = ["autocast", "GradScaler"]
