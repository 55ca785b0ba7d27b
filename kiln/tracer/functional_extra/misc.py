"""Types and the rest: finfo/iinfo, can_cast, broadcast_shapes, typename, vmap's loop,
nonzero_static, histogramdd, DLPack."""

from __future__ import annotations

import ctypes
import math
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.runtime.device import Device, cupy_module
from kiln.tracer import functional as F
from kiln.tracer.creation import from_numpy
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _as_tensor
from kiln.tracer.tensor import Size, Tensor


# ----------------------------------------------------------------------------- types and misc

class finfo:
    """Machine limits of a floating dtype (torch.finfo)."""

    def __init__(self, type=None):
        kind = (type or dt.get_default_dtype()).to_real()      # a complex type's parts
        info = np.finfo(kind.np)
        self.dtype = kind.name
        self.bits, self.eps, self.max, self.min = info.bits, float(info.eps), float(info.max), \
            float(info.min)
        self.tiny = self.smallest_normal = float(info.tiny)
        # 10**-precision as a Python float, as PyTorch gives it: NumPy rounds it to the dtype
        # (float16's 0.0010004, float32's 9.99999997e-07)
        self.resolution = 10.0 ** -info.precision

    def __repr__(self) -> str:          # PyTorch prints the limits with six digits
        return f"finfo(resolution={self.resolution:g}, min={self.min:g}, max={self.max:g}, " \
               f"eps={self.eps:g}, smallest_normal={self.tiny:g}, tiny={self.tiny:g}, " \
               f"dtype={self.dtype})"


class iinfo:
    """Limits of an integer dtype (torch.iinfo)."""

    def __init__(self, type):
        info = np.iinfo(type.np)
        self.dtype, self.bits, self.max, self.min = type.name, info.bits, int(info.max), \
            int(info.min)

    def __repr__(self) -> str:
        return f"iinfo(min={self.min:g}, max={self.max:g}, dtype={self.dtype})"


def can_cast(from_, to) -> bool:
    return from_.category <= to.category


def broadcast_shapes(*shapes):
    return Size(np.broadcast_shapes(*[tuple(s) if not isinstance(s, int) else (s,)
                                      for s in shapes]))


def typename(obj) -> str:
    if isinstance(obj, Tensor):
        return obj.type()
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def get_device(input) -> int:
    return -1 if input.device.type == "cpu" else (input.device.index or 0)


def set_default_tensor_type(t) -> None:
    name = t if isinstance(t, str) else getattr(t, "__name__", "")
    if "Double" in name:
        dt.set_default_dtype(dt.float64)
    elif "Float" in name:
        dt.set_default_dtype(dt.float32)
    else:
        raise TypeError(f"set_default_tensor_type: only floating-point types are supported, "
                        f"got {t}")


def map_slices(func, in_dims=0, out_dims=0, randomness="error", *, chunk_size=None):
    """Map `func` over a batch dimension of its tensor arguments by calling it once per slice
    and stacking (a loop, not torch's batching rules: the same results, at the cost of one call
    per element). The engine of `kiln.func.vmap` (which is also `kiln.vmap`), which adds
    pytrees of inputs and outputs, argument checks and randomness modes."""
    def mapped(*args):
        dims = in_dims if isinstance(in_dims, (tuple, list)) else (in_dims,) * len(args)
        sizes = {a.shape[d] for a, d in zip(args, dims) if isinstance(a, Tensor) and d is not None}
        if len(sizes) != 1:
            raise ValueError(f"vmap: expected all mapped inputs to have the same size along the "
                             f"mapped dim, got sizes {sorted(sizes)}")
        n = sizes.pop()
        results = []
        for i in range(n):
            call = [F.select(a, d, i) if isinstance(a, Tensor) and d is not None else a
                    for a, d in zip(args, dims)]
            results.append(func(*call))
        first = results[0]
        if isinstance(first, tuple):
            od = out_dims if isinstance(out_dims, (tuple, list)) else (out_dims,) * len(first)
            return tuple(F.stack([r[j] for r in results], od[j]) for j in range(len(first)))
        return F.stack(results, out_dims)
    return mapped


def nonzero_static(input, *, size, fill_value=-1):
    idx = F.nonzero(input)
    n = idx.shape[0]
    if n >= size:
        return F.narrow(idx, 0, 0, size)
    pad = F.full((size - n, idx.shape[1]), fill_value, dtype=dt.int64, device=input.device)
    return F.cat([idx, pad], 0)


def frobenius_norm(input, dim=(-2, -1), keepdim=False):
    return F.sqrt(F.sum(input * input, dim, keepdim))


def histogramdd(input, bins=10, *, range=None, weight=None, density=False):
    """Counts (or summed weights) of the rows of `input` (..., D) on a grid of D axes of bins,
    by PyTorch's rules: `bins` counts per axis (edges evenly spaced over `range`, else over
    the data's range, widened by 1/2 each way when empty of width) or tensors of edges; a
    row outside an axis's first and last edge is not counted, and the last bin holds its
    right edge. Edges are searched as given, by binary search: unsorted edges give what
    PyTorch's search gives."""
    data = input._host("histogramdd()")
    kind = data.dtype
    rows = data.reshape(-1, data.shape[-1])
    dims = rows.shape[1]
    bins = [bins] * dims if isinstance(bins, int) else list(bins)
    if len(bins) != dims:
        raise op_error("histogramdd", "histogramdd: The size of bins must be equal to the "
                       f"innermost dimension of the input ({len(bins)} vs {dims}).")
    edges = [b._host("histogramdd()").astype(kind) if isinstance(b, Tensor) else
             _even_edges(rows[:, i], int(b), None if range is None else range[2 * i:2 * i + 2],
                         kind) for i, b in enumerate(bins)]
    counted = np.ones(rows.shape[0], dtype=bool)
    places = []
    for i, e in enumerate(edges):
        x = rows[:, i]
        counted &= (x >= e[0]) & (x <= e[-1])
        place = _upper_bound(e, x) - 1
        places.append(np.where(place == len(e) - 1, place - 1, place))
    hist = np.zeros(tuple(len(e) - 1 for e in edges), dtype=kind)
    w = np.ones(rows.shape[0], dtype=kind) if weight is None else \
        weight._host("histogramdd()").astype(kind).reshape(-1)
    np.add.at(hist, tuple(p[counted] for p in places), w[counted])
    if density:
        hist = hist / hist.sum()
        for i, e in enumerate(edges):
            hist = hist / np.diff(e).reshape((-1,) + (1,) * (dims - i - 1))
    H = namedtuple("histogramdd", ["hist", "bin_edges"])
    return H(_as_tensor(hist.astype(kind), input), tuple(_as_tensor(e, input) for e in edges))


def _even_edges(x: np.ndarray, count: int, span, kind) -> np.ndarray:
    """`count` + 1 edges evenly over `span` (or x's range; [0, 1] for no values), as
    PyTorch's linspace spaces them in `kind`: from the start up to half way, from the end
    after."""
    if span is not None:
        lo, hi = float(span[0]), float(span[1])
    else:
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise op_error("histogramdd", f"range of [{lo}, {hi}] is not finite")
    if lo > hi:
        raise op_error("histogramdd", f"min should not exceed max, got min {lo} max {hi}")
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    lo, hi = kind.type(lo), kind.type(hi)
    step = (hi - lo) / kind.type(count)
    i = np.arange(count + 1).astype(kind)
    return np.where(i < (count + 1) // 2, lo + step * i,
                    hi - step * (kind.type(count) - i)).astype(kind)


def _upper_bound(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each x, the first position in `edges` whose edge exceeds it, by binary search
    (C++'s std::upper_bound, step for step, so unsorted edges give its answer too)."""
    first = np.zeros(x.shape, dtype=np.int64)
    count = np.full(x.shape, len(edges), dtype=np.int64)
    while (count > 0).any():
        step = count // 2
        probe = first + step
        right = (count > 0) & ~(x < edges[np.minimum(probe, len(edges) - 1)])
        first = np.where(right, probe + 1, first)
        count = np.where(right, count - step - 1, np.where(count > 0, step, 0))
    return first


def from_dlpack(ext_tensor):
    """A tensor sharing memory with any DLPack producer (a NumPy array, a torch or CuPy
    tensor, a capsule from `to_dlpack`)."""
    if hasattr(ext_tensor, "__dlpack_device__") and ext_tensor.__dlpack_device__()[0] == 2:
        arr = cupy_module().from_dlpack(ext_tensor)
        return Tensor._make(arr, dt.from_numpy(arr.dtype), Device("cuda"))
    if not hasattr(ext_tensor, "__dlpack__"):         # a bare capsule
        ext_tensor = _Capsule(ext_tensor)
    array = np.from_dlpack(ext_tensor)
    if not array.flags.writeable:
        array = _writeable(array)
    return from_numpy(array)


def _writeable(array: np.ndarray) -> np.ndarray:
    """A writeable view of memory NumPy imported read-only. A legacy (unversioned) DLPack
    capsule, what torch's to_dlpack makes, has no read-only flag, so NumPy marks its arrays
    read-only; the producer's memory is writeable, and PyTorch's from_dlpack writes into it.
    The view keeps `array` (which keeps the capsule's memory) alive."""
    if array.size == 0 or any(st < 0 for st in array.strides):
        return array
    extent = sum((n - 1) * st for n, st in zip(array.shape, array.strides)) + array.itemsize
    memory = (ctypes.c_char * extent).from_address(array.__array_interface__["data"][0])
    memory.owner = array
    return np.ndarray(array.shape, array.dtype, buffer=memory, strides=array.strides)


class _Capsule:
    """A DLPack capsule with the protocol methods np.from_dlpack asks for (CPU memory)."""

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **kwargs):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


def to_dlpack(tensor):
    """A DLPack capsule of the tensor's memory: a versioned one (DLPack 1.0, whose flags say
    the memory is writeable) where the array can make it, which torch and NumPy both read."""
    try:
        return tensor._data.__dlpack__(max_version=(1, 0))
    except TypeError:           # an exporter without DLPack 1.0
        return tensor._data.__dlpack__()
