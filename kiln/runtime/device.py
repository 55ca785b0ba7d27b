"""Devices and their array modules: `cpu` computes with NumPy, `cuda` with CuPy; `meta` holds
shapes and dtypes only (`MetaArray`), for module templates and shape checks."""

from __future__ import annotations

import functools
import threading
import math

import numpy as np

from kiln.ir.dtypes import NO_CUDA_BFLOAT16


class Device:
    """A place tensors live: `kiln.device("cpu")`, `kiln.device("cuda:0")`, or
    `kiln.device("meta")` (shape and dtype, no data)."""

    __slots__ = ("type", "index")

    def __new__(cls, spec=None, index: int | None = None, *, type: str | None = None):
        if type is not None:                # device(type="cuda", index=1)
            spec = type
        elif spec is None:
            spec = "cpu"
        if isinstance(spec, Device):
            return spec
        if isinstance(spec, int) and not isinstance(spec, bool):
            spec, index = "cuda", spec      # device(1): the accelerator's device 1, as torch
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a string like 'cpu' or 'cuda:0', got {spec!r}")
        kind, _, idx = spec.partition(":")
        if kind not in ("cpu", "cuda", "meta"):
            raise RuntimeError(f"Expected one of cpu, cuda, meta device type at start of device "
                               f"string: {spec}")
        if idx:
            index = int(idx)
        if kind == "cuda" and index is None:
            index = 0
        return _intern(kind, index)

    @property
    def xp(self):
        """The array module computing on this device."""
        if self.type == "meta":
            raise NotImplementedError(_NO_META_DATA.format(what="computing with an array module"))
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

    def __enter__(self) -> "Device":
        """`with kiln.device("meta"):` factories without a device= put tensors here (modules
        built inside included), as kiln.set_default_device does until the block ends."""
        DEFAULTS.entered = DEFAULTS.entered + (DEFAULTS.device,)
        DEFAULTS.device = self
        return self

    def __exit__(self, *exc) -> None:
        DEFAULTS.device, DEFAULTS.entered = DEFAULTS.entered[-1], DEFAULTS.entered[:-1]


@functools.lru_cache(maxsize=None)
def _intern(kind: str, index: int | None) -> Device:
    dev = object.__new__(Device)
    dev.type, dev.index = kind, index
    return dev


CPU = Device("cpu")
META = Device("meta")


class _Defaults(threading.local):
    """Where factories put tensors without a device= (kiln.set_default_device, `with
    kiln.device(...)`), one per thread as PyTorch's: a thread starts on the CPU whatever
    another thread set. The class attributes are each new thread's starting values."""

    device = CPU
    entered = ()        # the defaults that `with device:` blocks replaced, innermost last


DEFAULTS = _Defaults()

_NO_META_DATA = ("{what}: a tensor on the meta device has a shape and dtype but no data. Use "
                 "real tensors, or give a meta module real ones with Module.to_empty(device=...) "
                 "and load_state_dict")


class MetaArray:
    """The storage of a meta tensor: a shape and a NumPy dtype, no memory. It answers what
    describes an array (shape, ndim, size, strides of a C-contiguous layout) and refuses,
    with the same message, everything that would need its values."""

    __slots__ = ("shape", "dtype")
    base = None

    def __init__(self, shape: tuple, dtype):
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    itemsize = property(lambda self: self.dtype.itemsize)
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    @property
    def strides(self) -> tuple:
        strides, step = [], self.dtype.itemsize
        for n in reversed(self.shape):
            strides.append(step)
            step *= max(n, 1)
        return tuple(reversed(strides))

    @property
    def flags(self):
        return _META_FLAGS

    def copy(self) -> "MetaArray":
        return MetaArray(self.shape, self.dtype)

    def astype(self, dtype, copy: bool = True) -> "MetaArray":
        return MetaArray(self.shape, dtype)

    def __deepcopy__(self, memo) -> "MetaArray":
        return self.copy()

    def __reduce__(self):
        return (MetaArray, (self.shape, self.dtype.str))

    def __array__(self, dtype=None, copy=None):
        raise NotImplementedError(_NO_META_DATA.format(what="reading its values"))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise NotImplementedError(_NO_META_DATA.format(what=f"numpy.{ufunc.__name__}"))

    def __array_function__(self, func, types, args, kwargs):
        raise NotImplementedError(_NO_META_DATA.format(what=f"numpy.{func.__name__}"))

    def __getitem__(self, key):
        raise NotImplementedError(_NO_META_DATA.format(what="indexing its memory"))

    def __setitem__(self, key, value) -> None:
        # an in-place op on a meta tensor: its shape was checked, and there is nothing to write
        if not isinstance(value, MetaArray):
            raise NotImplementedError(_NO_META_DATA.format(what="writing values into it"))

    def __repr__(self) -> str:
        return f"MetaArray(shape={self.shape}, dtype={self.dtype})"


class _MetaFlags:
    # not writeable, so in-place ops take the general path, which writes nothing into meta
    c_contiguous, f_contiguous, writeable, owndata = True, False, False, True


_META_FLAGS = _MetaFlags()


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


def is_host_array(array) -> bool:
    """Whether `array` is in host memory: a NumPy array, and not a device array (which
    exposes `__cuda_array_interface__`; tests/fake_cuda.py's device arrays are NumPy
    subclasses, so `isinstance(a, np.ndarray)` alone cannot tell them apart)."""
    return isinstance(array, np.ndarray) and not hasattr(array, "__cuda_array_interface__")


def pinned_copy(array: np.ndarray) -> np.ndarray:
    """A copy of host `array` in page-locked memory (CuPy's pinned allocator), which the GPU
    reads by DMA."""
    import cupyx
    cupy_module()                        # CuPy and a GPU, or the message that says so
    out = cupyx.empty_pinned(array.shape, dtype=array.dtype)
    out[...] = array
    return out


def is_pinned_array(array) -> bool:
    """Whether host `array` views page-locked memory (`pinned_copy`'s, or any CuPy pinned
    allocation): the end of its view chain is a `cupy.cuda.PinnedMemoryPointer`."""
    if not is_host_array(array) or not cuda_is_available():
        return False
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    return isinstance(root.base, cupy_module().cuda.PinnedMemoryPointer)


def device_of_array(array) -> Device:
    if isinstance(array, np.ndarray):
        return CPU
    if isinstance(array, MetaArray):
        return META
    return Device("cuda", int(array.device.id))


def to_device(array, device: Device):
    """Copy an array to a device (no copy when it is already there). To the meta device only
    the shape and dtype go; nothing comes back from it."""
    if isinstance(array, MetaArray):
        if device.type == "meta":
            return array
        raise NotImplementedError("Cannot copy out of meta tensor; no data! Please use "
                                  "Module.to_empty() instead of Module.to() when moving a module "
                                  "from meta to a different device.")
    if device.type == "meta":
        return MetaArray(array.shape, array.dtype)
    if device.type == "cpu":
        return array if isinstance(array, np.ndarray) else array.get()
    if array.dtype.name == "bfloat16":
        raise RuntimeError(f"copying a bfloat16 tensor of shape {list(array.shape)} to "
                           f"{device}: {NO_CUDA_BFLOAT16}")
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


# Memory of cuda tensors used on a stream other than the one that made them, held after the
# tensor is gone until that stream's work queued by then has finished (Tensor.record_stream)
_IN_USE: list = []          # (cupy event, array) pairs


def record_stream(array, stream) -> None:
    """`array` (a cuda tensor's) is used by work on CuPy stream `stream`. CuPy's pool knows only
    the stream that allocated an array and would hand its memory out again once the array is
    gone; kiln holds it until the work queued on `stream` by then has finished. Call it with
    the tensor's lifetime: `weakref.finalize(tensor, record_stream, array, stream)`."""
    event = cupy_module().cuda.Event(disable_timing=True)
    event.record(stream)
    _IN_USE[:] = [(e, a) for e, a in _IN_USE if not e.done]
    _IN_USE.append((event, array))
