"""Memory formats (`torch.channels_last` and its kin): how a tensor's elements lie in memory.

A layout never changes a value, only the strides: `x.to(memory_format=kiln.channels_last)`
copies an NCHW tensor so that its channels vary fastest (strides (H*W*C, 1, W*C, C)), as
PyTorch does, and `is_contiguous(memory_format=...)` answers from the strides. kiln's ops
accept any strides and lay out their results as PyTorch's do (`tracer/strides.py`), except an
eager convolution's result, channels-last whatever its input's (ARCHITECTURE.md's departures);
a compiled program's results are copied into eager's layouts.
"""

from __future__ import annotations


class memory_format:
    """One of kiln.contiguous_format, channels_last, channels_last_3d, preserve_format."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"kiln.{self.name}"

    def __reduce__(self):       # pickles as the module constant it is
        return self.name


contiguous_format = memory_format("contiguous_format")
channels_last = memory_format("channels_last")
channels_last_3d = memory_format("channels_last_3d")
preserve_format = memory_format("preserve_format")

# per format: the order of dims from the fastest-varying to the slowest
_CHANNELS_LAST_ORDER = {channels_last: (1, 3, 2, 0), channels_last_3d: (1, 4, 3, 2, 0)}


def check(fmt, where: str, ndim: int) -> None:
    """A clear error for what is not a memory format, or a channels-last format of the wrong
    rank (PyTorch's rule: channels_last needs 4 dims, channels_last_3d 5)."""
    if not isinstance(fmt, memory_format):
        raise TypeError(f"{where}: memory_format must be a kiln memory format (such as "
                        f"kiln.channels_last), got {fmt!r}")
    order = _CHANNELS_LAST_ORDER.get(fmt)
    if order is not None and ndim != len(order):
        raise RuntimeError(f"{where}: required rank {len(order)} tensor to use {fmt.name} "
                           f"format, got a tensor of rank {ndim}")


def dense_strides(shape: tuple, order, step: int = 1) -> tuple:
    """The strides of a dense tensor of `shape` whose dims in `order` (fastest first) vary
    fastest, size-1 dims included: in elements, or in bytes with `step` an item size."""
    strides = [0] * len(shape)
    for d in order:
        strides[d] = step
        step *= max(shape[d], 1)
    return tuple(strides)


def is_dense_in(shape: tuple, strides: tuple, order, step: int = 1) -> bool:
    """Whether elements at `strides` lie densely with the dims of `order` (fastest first)
    varying fastest; dims of size 1 take any stride, as in PyTorch (`step`: as
    `dense_strides`'s)."""
    for d in order:
        if shape[d] != 1:
            if strides[d] != step:
                return False
            step *= shape[d]
    return True


def is_contiguous_as(shape: tuple, strides: tuple, fmt) -> bool:
    """Whether elements at `strides` (in elements) lie densely in `fmt`'s order; dims of size 1
    take any stride, as in PyTorch, and an empty tensor is contiguous (its channels-last
    answer reads the strides, as PyTorch's does)."""
    order = _CHANNELS_LAST_ORDER.get(fmt)
    if order is None:
        if 0 in shape:
            return True
        order = tuple(reversed(range(len(shape))))
    return len(order) == len(shape) and is_dense_in(shape, strides, order)


def strides_of(shape: tuple, fmt) -> tuple:
    """The strides (in elements) of a dense tensor of `shape` laid out in `fmt`, size-1 dims
    included (what PyTorch gives a tensor it makes in that format)."""
    return dense_strides(shape, _CHANNELS_LAST_ORDER.get(fmt, range(len(shape) - 1, -1, -1)))


def arrange(xp, a, fmt):
    """A copy of `a` laid out in `fmt`, with exactly `strides_of(a.shape, fmt)`."""
    order = _CHANNELS_LAST_ORDER.get(fmt, tuple(reversed(range(a.ndim))))
    slow_to_fast = tuple(reversed(order))
    dense = xp.empty(tuple(a.shape[d] for d in slow_to_fast), a.dtype)
    dense[...] = a.transpose(slow_to_fast)
    if slow_to_fast == tuple(range(a.ndim)):
        # row-major: the array itself, not a view of it, so nothing takes the copy (no NumPy
        # base) for a view of another tensor (a trace refuses in-place writes to those)
        return dense
    back = [0] * a.ndim
    for position, d in enumerate(slow_to_fast):
        back[d] = position
    return dense.transpose(back)
