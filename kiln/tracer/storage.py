"""`Tensor.untyped_storage()` and `Tensor.storage()`: a read-only look at the memory a tensor
views, for code that asks which tensors share memory (`a.untyped_storage().data_ptr() ==
b.untyped_storage().data_ptr()`) or how big it is (`nbytes()`, `storage().size()`).

A kiln tensor owns a NumPy (or CuPy) array, and a view's array is a view of another; the
memory is the array at the end of that `.base` chain. These objects describe it; they do not
own it, and resizing it (`resize_`, which PyTorch code uses to free parameters) is refused.
In-place writes ask here what memory arrays share: PyTorch's overlap checks
(`internal_overlap`, `partial_overlap`) and a writeable array over a broadcast view's memory
(`writable_alias`).
"""

from __future__ import annotations

import warnings

import numpy as np

from kiln.ir import dtypes as dt
from kiln.runtime.device import is_host_array
from kiln.runtime.layouts import dense


def memory_root(array):
    """The array whose memory `array` views (itself when it owns its memory)."""
    kind, root = type(array), array
    while True:
        base = getattr(root, "base", None)
        if isinstance(base, kind):
            root = base
        elif isinstance(getattr(base, "base", None), kind) and \
                hasattr(base, "__array_interface__"):
            root = base.base        # NumPy's as_strided: a view of an interface of the array
        else:
            return root


def element_offset(array) -> int:
    """Elements from the start of the memory `array` views to its first element (PyTorch's
    storage_offset): from its `memory_root` on the host, from its allocation's start on CuPy;
    0 for an array without memory (meta)."""
    try:
        if is_host_array(array):
            start = array.__array_interface__["data"][0] - \
                memory_root(array).__array_interface__["data"][0]
        else:
            start = array.data.ptr - array.data.mem.ptr
    except AttributeError:
        return 0
    return start // array.itemsize


def address(array) -> int:
    """The address of `array`'s first element (host or device memory)."""
    if is_host_array(array):
        return array.__array_interface__["data"][0]
    return array.data.ptr


def internal_overlap(array) -> bool:
    """Whether two elements of `array` are one memory location for certain: a dimension longer
    than one with stride 0, as in an expand()ed tensor (PyTorch's `has_internal_overlap` ==
    YES; other self-overlapping strides it cannot tell, and neither does this)."""
    strides = getattr(array, "strides", ())     # (a meta tensor's array has none)
    return 0 in strides and array.size > 0 and any(s == 0 and n > 1
                                                   for s, n in zip(strides, array.shape))


def partial_overlap(out, other) -> bool:
    """Whether `other` (an input of an in-place op) and `out` (the tensor it writes) share some
    memory without being the same elements in the same order: PyTorch's get_overlap_status ==
    PARTIAL, which its in-place ops refuse. Like PyTorch, only tensors that each fill a block
    of memory once are compared (others are "too hard" and allowed)."""
    if other is out or out.size == 0 or other.size == 0:
        return False
    if getattr(out, "base", None) is None and getattr(other, "base", None) is None:
        return False                # two arrays that each own their memory
    if memory_root(out) is not memory_root(other) or not (dense(out) and dense(other)):
        return False
    a, b = address(out), address(other)
    a_end, b_end = a + out.size * out.itemsize, b + other.size * other.itemsize
    if a == b and a_end == b_end:
        return (out.strides != other.strides or out.shape != other.shape) and \
            out.itemsize == other.itemsize
    return a < b_end and b < a_end


def writable_alias(array):
    """`array`'s elements as a writeable array over the same memory: NumPy's broadcast views
    (an expand()ed tensor and the views taken from it) are read-only, where PyTorch writes
    through them. None when the memory itself is read-only (or not host memory)."""
    if not is_host_array(array):
        return None
    root = memory_root(array)
    if not root.flags.writeable or not (root.flags.c_contiguous or root.flags.f_contiguous):
        return None
    start = address(array) - address(root)
    if start % array.itemsize:
        return None
    flat = root.reshape(-1, order="A").view(np.uint8)
    if flat.size % array.itemsize:
        return None
    flat = flat.view(array.dtype)
    return np.lib.stride_tricks.as_strided(flat[start // array.itemsize:], array.shape,
                                           array.strides, writeable=True)


class UntypedStorage:
    """The bytes a tensor's memory holds (torch.UntypedStorage)."""

    def __init__(self, root, device):
        self._root, self.device = root, device

    def data_ptr(self) -> int:
        if self.device.type == "cpu":
            return self._root.__array_interface__["data"][0]
        return self._root.data.ptr

    def nbytes(self) -> int:
        return int(self._root.nbytes)

    def size(self) -> int:
        return self.nbytes()

    def __len__(self) -> int:
        return self.nbytes()

    def element_size(self) -> int:
        return 1

    @property
    def dtype(self):
        return dt.uint8

    def _bytes(self) -> np.ndarray:
        root = self._root if self.device.type == "cpu" else self._root.get()
        return np.ascontiguousarray(root).reshape(-1).view(np.uint8)

    def tolist(self) -> list:
        return self._bytes().tolist()

    def __getitem__(self, index):
        return self._bytes()[index].tolist()

    def is_shared(self) -> bool:
        from kiln.runtime import shared_memory
        return self.device.type == "cuda" or shared_memory.segment_of(self._root) is not None

    def is_pinned(self, device="cuda") -> bool:
        return False

    def resize_(self, size: int):
        raise RuntimeError(f"UntypedStorage.resize_: kiln's tensors own their arrays, so their "
                           f"memory cannot be resized in place (asked for {size} bytes of "
                           f"{self.nbytes()}); make a new tensor instead")

    def untyped(self) -> "UntypedStorage":
        return self

    def __repr__(self) -> str:
        return f"kiln.UntypedStorage(device={self.device}) of size {self.nbytes()}"


class TypedStorage(UntypedStorage):
    """The same memory counted in elements of the tensor's dtype (torch.TypedStorage,
    deprecated there in favour of untyped_storage)."""

    def __init__(self, root, device, dtype):
        super().__init__(root, device)
        self._dtype = dtype

    @property
    def dtype(self):
        return self._dtype

    def element_size(self) -> int:
        return np.dtype(self.dtype.np).itemsize

    def size(self) -> int:
        return self.nbytes() // self.element_size()

    def __len__(self) -> int:
        return self.size()

    def _values(self) -> np.ndarray:
        return self._bytes()[:self.size() * self.element_size()].view(self.dtype.np)

    def tolist(self) -> list:
        return self._values().tolist()

    def __getitem__(self, index):
        return self._values()[index].tolist()

    def untyped(self) -> UntypedStorage:
        return UntypedStorage(self._root, self.device)

    def __repr__(self) -> str:
        return (f"kiln.TypedStorage(dtype={self.dtype}, device={self.device}) of size "
                f"{self.size()}")


def untyped_storage(tensor) -> UntypedStorage:
    return UntypedStorage(memory_root(tensor._data), tensor.device)


def storage(tensor) -> TypedStorage:
    warnings.warn("TypedStorage is deprecated. It will be removed in the future and "
                  "UntypedStorage will be the only storage class. To access UntypedStorage "
                  "directly, use tensor.untyped_storage() instead of tensor.storage()",
                  UserWarning, stacklevel=2)
    return TypedStorage(memory_root(tensor._data), tensor.device, tensor.dtype)
