"""Devices and their array modules: `cpu` computes with NumPy, `cuda` with CuPy."""

from __future__ import annotations

import functools

import numpy as np


class Device:
    """A place tensors live: `kiln.device("cpu")`, `kiln.device("cuda:0")`."""

    __slots__ = ("type", "index")

    def __new__(cls, spec="cpu", index: int | None = None):
        if isinstance(spec, Device):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a string like 'cpu' or 'cuda:0', got {spec!r}")
        kind, _, idx = spec.partition(":")
        if kind not in ("cpu", "cuda"):
            raise RuntimeError(f"Expected one of cpu, cuda device type at start of device "
                               f"string: {spec}")
        if idx:
            index = int(idx)
        if kind == "cuda" and index is None:
            index = 0
        return _intern(kind, index)

    @property
    def xp(self):
        """The array module computing on this device."""
        return np if self.type == "cpu" else cupy_module()

    def __repr__(self) -> str:
        return f"device(type='{self.type}'" + (
            f", index={self.index})" if self.index is not None else ")")

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            other = Device(other)
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __reduce__(self):
        return (Device, (str(self),))


@functools.lru_cache(maxsize=None)
def _intern(kind: str, index: int | None) -> Device:
    dev = object.__new__(Device)
    dev.type, dev.index = kind, index
    return dev


CPU = Device("cpu")


@functools.lru_cache(maxsize=None)
def cupy_module():
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError("CUDA tensors need CuPy: pip install 'kiln[gpu-cuda12]' for a CUDA 12 "
                           "driver, 'kiln[gpu-cuda13]' for CUDA 13 (nvidia-smi shows which)") \
            from e
    return cupy


def cuda_is_available() -> bool:
    try:
        return cupy_module().cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def device_of_array(array) -> Device:
    if isinstance(array, np.ndarray):
        return CPU
    return Device("cuda", int(array.device.id))


def to_device(array, device: Device):
    """Copy an array to a device (no copy when it is already there)."""
    if device.type == "cpu":
        return array if isinstance(array, np.ndarray) else array.get()
    cp = cupy_module()
    with cp.cuda.Device(device.index):
        return cp.asarray(array)


def is_writeable(array) -> bool:
    """Whether a write into `array` lands on each element's own memory.

    NumPy says so in `flags.writeable` (false for read-only memory and for broadcast views).
    CuPy's flags have only c_contiguous, f_contiguous and owndata, and its broadcast views are
    writeable, so there an expanded view (a zero stride on a dimension longer than one, what
    PyTorch calls internal overlap) is what counts as not writeable.
    """
    writeable = getattr(array.flags, "writeable", None)
    if writeable is not None:
        return writeable
    return array.size == 0 or not any(s == 0 and n > 1
                                      for s, n in zip(array.strides, array.shape))
