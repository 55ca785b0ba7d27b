"""PyTorch's choice of a fresh eager result's strides, worked out once for every op that makes one.

PyTorch lays out a new result by one of a few rules, and kiln follows the same ones so that
`.stride()`, `.is_contiguous()` and `.view()` answer as PyTorch's do:
- "iter" (TensorIterator: elementwise ops): the inputs' common layout when they are all
  contiguous, all channels-last or all dense with equal strides; else the dims ordered from
  the fastest-varying by the first input whose strides tell two dims apart (broadcast dims
  skipped, equal strides put the shorter dim first);
- "contiguous" (reductions, cumulative ops, softmax, layer_norm, topk, ...): row-major;
- "preserve" (`empty_like`, `clone`, `flip`, `sort`): a dense input's own strides, else a
  dense layout in the input's order of dims;
- "suggest" (`pad`, `roll`, batch_norm): channels-last where the input's strides look
  channels-last (PyTorch's `suggest_memory_format`), else row-major;
- "cat": the inputs' suggested format when they all agree, else row-major.

The dispatcher asks `primitive_strides` once per signature (the op, its inputs' shapes, strides
and dtypes) and copies a primitive's result into that layout when NumPy's differs; a composite
op whose PyTorch kernel has its own rule (softmax's "contiguous" over elementwise steps that
would keep the input's layout) ends with `settle`; one that arranges its intermediates for
speed runs them under `numpy_layouts`. Strides here are NumPy's, in bytes.
"""

from __future__ import annotations

import contextlib
import functools

from kiln.runtime.device import MetaArray
from kiln.runtime.layouts import dense, in_layout, layout_recipe
from kiln.tracer.layout import _CHANNELS_LAST_ORDER, dense_strides, is_dense_in

# set inside `numpy_layouts()`: results keep the layouts NumPy gives them
KEEP_NUMPY = [False]


@contextlib.contextmanager
def numpy_layouts():
    """Within: primitives' results and `settle` keep the layouts NumPy gives them. For a
    composite that lays its intermediates out for speed (max pooling reduces channels-last
    windows slab by slab) and lays out its own result by PyTorch's rule at the end."""
    saved = KEEP_NUMPY[0]
    KEEP_NUMPY[0] = True
    try:
        yield
    finally:
        KEEP_NUMPY[0] = saved


# the channels-last orders of dims (fastest first) by rank, as `tracer.layout` keeps them
_CL_ORDERS = {len(order): order for order in _CHANNELS_LAST_ORDER.values()}


@functools.lru_cache(maxsize=4096)          # eager fast paths ask it on every call
def contiguous(shape: tuple, itemsize: int) -> tuple:
    """Row-major byte strides of `shape`, size-1 dims included (PyTorch's for a new tensor)."""
    return dense_strides(shape, range(len(shape) - 1, -1, -1), itemsize)


def suggest_format(shape: tuple, strides: tuple):
    """The channels-last dims order (fastest first) PyTorch's `suggest_memory_format` sees in
    a 4-D or 5-D tensor's strides (`is_channels_last_strides_2d/3d`), else None (row-major)."""
    order = _CL_ORDERS.get(len(shape))
    if order is None or strides[1] == 0:
        return None
    low = 0
    for d in order:
        if shape[d] == 0 or strides[d] < low:
            return None
        if d == 0 and low == strides[1]:    # N111 and sliced N11W tensors stay row-major
            return None
        low = strides[d] * shape[d] if shape[d] > 1 else strides[d]
    return order


def suggested(shape: tuple, source, itemsize: int) -> tuple:
    """Byte strides of a result of `shape` in the format `source` (an array) suggests."""
    order = suggest_format(source.shape, source.strides)
    return contiguous(shape, itemsize) if order is None else dense_strides(shape, order, itemsize)


def preserved(source, itemsize: int) -> tuple:
    """PyTorch's preserve_format for a new tensor like array `source`: its strides when it is
    dense, else a dense layout keeping its order of dims (`infer_dense_strides`)."""
    shape, strides = source.shape, source.strides
    if dense(source):
        return tuple(s // source.itemsize * itemsize for s in strides)
    return dense_strides(shape, _fastest_first(shape, [strides]), itemsize)


def _fastest_first(shape: tuple, operand_strides: list) -> list:
    """TensorIterator's order of dims, fastest first: an insertion sort from row-major order
    in which the first operand whose strides tell two dims apart decides, a zero (broadcast)
    stride tells nothing, and of equal strides the longer dim goes after."""
    ndim = len(shape)
    perm = list(reversed(range(ndim)))

    def should_swap(d0: int, d1: int) -> int:
        for strides in operand_strides:
            s0, s1 = strides[d0], strides[d1]
            if s0 == 0 or s1 == 0:
                continue
            if s0 != s1:
                return -1 if s0 < s1 else 1
            if shape[d0] > shape[d1]:
                return 1
        return 0

    for i in range(1, ndim):
        d1 = i
        for d0 in range(i - 1, -1, -1):
            comparison = should_swap(perm[d0], perm[d1])
            if comparison > 0:
                perm[d0], perm[d1] = perm[d1], perm[d0]
                d1 = d0
            elif comparison < 0:
                break
    return perm


def elementwise(shape: tuple, arrays, itemsize: int) -> tuple:
    """TensorIterator's byte strides for the result of `shape` of an elementwise op on `arrays`
    (its operands in order; a Python number is a 0-d operand, as PyTorch wraps it)."""
    ndim = len(shape)
    if ndim == 0:
        return ()
    operands = [a for a in arrays if hasattr(a, "strides")]
    if len(operands) == len(arrays) and all(a.shape == shape for a in operands):
        # fast setup: operands of one shape that agree on a layout give it to the result
        c_order = tuple(reversed(range(ndim)))
        if all(is_dense_in(shape, a.strides, c_order, a.itemsize) for a in operands):
            return contiguous(shape, itemsize)
        cl = _CL_ORDERS.get(ndim)
        if ndim == 4 and all(is_dense_in(shape, a.strides, cl, a.itemsize) for a in operands):
            return dense_strides(shape, cl, itemsize)
        elements = [tuple(s // a.itemsize for s in a.strides) for a in operands]
        if all(dense(a) for a in operands) and \
                all(e == elements[0] for e in elements):
            return tuple(s * itemsize for s in elements[0])
    aligned = []
    for a in operands:
        offset = ndim - a.ndim
        aligned.append((0,) * offset + tuple(
            0 if n == 1 and shape[offset + i] != 1 else s
            for i, (n, s) in enumerate(zip(a.shape, a.strides))))
    perm = _fastest_first(shape, aligned)
    if perm == list(reversed(range(ndim))):
        return contiguous(shape, itemsize)
    strides, step = [0] * ndim, itemsize
    for d in perm:               # unlike the others, TensorIterator's step keeps a 0-size dim
        strides[d] = step
        step *= shape[d]
    return tuple(strides)


def cat(shape: tuple, arrays, itemsize: int) -> tuple:
    """`torch.cat`'s result: the format all inputs suggest, row-major when any differs."""
    orders = {suggest_format(a.shape, a.strides) for a in arrays}
    order = orders.pop() if len(orders) == 1 else None
    return contiguous(shape, itemsize) if order is None else dense_strides(shape, order, itemsize)


def stacked(tensors, dim: int, itemsize: int):
    """`torch.stack(tensors, dim)`'s byte strides, for `dim` below their rank (None for tensors
    with no memory): PyTorch's stack is a cat along `dim` split by a view, so `dim` and the
    next take the cat's layout of it."""
    arrays = [t._data for t in tensors]
    if any(isinstance(a, MetaArray) or a.strides is None for a in arrays):
        return None
    shape = arrays[0].shape
    joined = shape[:dim] + (shape[dim] * len(arrays),) + shape[dim + 1:]
    strides = cat(joined, arrays, itemsize)
    step = strides[dim]
    return strides[:dim] + (shape[dim] * step, step) + strides[dim + 1:]


def _first(shape, arrays, itemsize):
    return preserved(arrays[0], itemsize)


def converted(source, itemsize: int) -> tuple:
    """`Tensor.to(dtype)`'s and `torch.tensor(array)`'s copy of array `source` (`_to_copy` under
    preserve_format): a dense source's strides, else the format it suggests."""
    if dense(source):
        return tuple(s // source.itemsize * itemsize for s in source.strides)
    return suggested(source.shape, source, itemsize)


def _converted(shape, arrays, itemsize):
    return converted(arrays[0], itemsize)


def _suggest_first(shape, arrays, itemsize):
    return suggested(shape, arrays[0], itemsize)


def _contiguous(shape, arrays, itemsize):
    return contiguous(shape, itemsize)


# primitives whose PyTorch counterpart has another rule than their kind's (`ir.ops` kinds:
# elementwise ones follow TensorIterator, reductions are row-major, views keep their strides)
_BY_NAME = {
    "cast": _converted, "flip": _first, "argsort": _first, "cat": cat, "pad": _suggest_first,
    "batch_norm": _suggest_first, "cumsum": _contiguous,
    "conj": None, "complex": elementwise, "angle": elementwise,
}
_BY_KIND = {"elementwise": elementwise, "special": elementwise, "reduce": _contiguous}


def primitive_strides(prim, arrays, shape: tuple, itemsize: int):
    """The byte strides PyTorch gives the result of `prim` on `arrays`, or None where kiln
    keeps what its computation gives (a view, a matrix product, a result of several)."""
    rule = _BY_NAME[prim.name] if prim.name in _BY_NAME else _BY_KIND.get(prim.kind)
    if rule is None or not isinstance(shape, tuple) or 0 in shape:
        return None
    if any(getattr(a, "strides", ()) is None for a in arrays):
        return None                             # a sparse tensor has no strides to follow
    return rule(shape, arrays, itemsize)


def settle(t, rule, source=None):
    """Lay fresh result `t` out by `rule` ("contiguous", "preserve" or "suggest", the last two
    after tensor `source`, or a tuple of byte strides), in place: its array is replaced by an
    equal copy where the strides differ. Only a result nothing else can see yet is settled (no
    view, no shared array), so autograd's saved tensors and a trace's values are unaffected.
    Returns `t`."""
    data = t._data
    now = data.strides                          # (None: a sparse tensor's, which has none)
    if now is None:
        return t
    if rule == "contiguous":
        if now == contiguous(data.shape, data.itemsize):
            return t                            # (the common case: one comparison)
    elif type(rule) is tuple:
        if now == rule:
            return t
    elif source is None or isinstance(source._data, MetaArray) or source._data.strides is None:
        return t
    if KEEP_NUMPY[0] or t is source or t._base is not None or isinstance(data, MetaArray) \
            or 0 in data.shape or data.ndim == 0:
        return t
    if type(rule) is tuple:
        strides = rule
    elif rule == "contiguous":
        strides = contiguous(data.shape, data.itemsize)
    elif rule == "preserve":
        strides = preserved(source._data, data.itemsize)
    else:
        strides = suggested(data.shape, source._data, data.itemsize)
    if now != strides:
        t._data = in_layout(data, layout_recipe(data.shape, strides, data.itemsize),
                            t.device.xp)
    return t
