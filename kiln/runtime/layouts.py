"""Arrays copied into a given memory layout: eager's strides for a compiled output, a parameter's
for the gradient stored in its `.grad` (PyTorch's layout contract)."""

from __future__ import annotations


def layout_recipe(shape: tuple, strides: tuple, itemsize: int,
                  offset: int = 0) -> tuple | None:
    """How `in_layout` makes an array of `shape` with exactly byte `strides` (a unit axis's
    too), worked out once: a permutation of C order where they are one ("permuted", its shape,
    the inverse axes), else memory spanning what the strides reach ("strided", elements,
    strides, `offset` elements before the first: a view's storage offset in eager's larger
    memory; a broadcast axis's stride 0 is written many times, with equal values). None where
    a stride is negative or not whole elements (no such layout is made)."""
    if any(s < 0 or s % itemsize for s in strides) or offset < 0:
        return None
    order = sorted(range(len(shape)), key=lambda d: -strides[d])
    permuted = tuple(shape[d] for d in order)
    inverse = tuple(order.index(d) for d in range(len(shape)))
    c_order, step = [0] * len(shape), itemsize
    for k in reversed(range(len(shape))):
        c_order[k], step = step, step * max(permuted[k], 1)
    if offset == 0 and all(c_order[inverse[d]] == strides[d] for d in range(len(shape))):
        return ("permuted", permuted, inverse)
    span = 1 + sum((n - 1) * s // itemsize for n, s in zip(shape, strides)) if \
        0 not in shape else 0
    return ("strided", span, strides, offset)


def in_layout(a, recipe: tuple, xp):
    """A copy of array `a` laid out by `recipe` (`layout_recipe` of its shape)."""
    if recipe[0] == "permuted":
        out = xp.empty(recipe[1], a.dtype).transpose(recipe[2])
    else:
        _, span, strides, offset = recipe
        memory = xp.empty(offset + span, a.dtype)
        out = xp.lib.stride_tricks.as_strided(memory[offset:], a.shape, strides)
    out[...] = a
    return out


def dense(a) -> bool:
    """Whether array `a`'s elements tile one block of memory with no gap and no overlap, in some
    order of its axes (PyTorch's is_non_overlapping_and_dense; `tracer.storage`'s overlap
    checks use it too)."""
    if a.flags.c_contiguous or a.flags.f_contiguous:
        return True
    expected = a.itemsize
    for s, n in sorted((s, n) for n, s in zip(a.shape, a.strides) if n != 1):
        if s != expected:
            return False
        expected *= n
    return True


def same_strides(a, b) -> bool:
    """Whether `a` and `b` (of one shape) have equal strides on every axis longer than one."""
    return all(n == 1 or s == t for n, s, t in zip(a.shape, a.strides, b.strides))


def grad_array(param, grad, xp, owned: bool):
    """The array `.grad` stores for gradient `grad` of a parameter whose array is `param`, as
    PyTorch's AccumulateGrad lays it out: the parameter's strides where the parameter is dense
    (a transposed or channels_last weight gets a gradient laid out alike), else C order.
    `owned`: nothing else holds `grad`, which is then taken as it is when already so laid out;
    otherwise it is copied."""
    if param.flags.c_contiguous or not dense(param):
        if owned and grad.flags.c_contiguous:
            return grad
        return grad.copy()
    if owned and same_strides(param, grad):
        return grad
    return in_layout(grad, layout_recipe(param.shape, param.strides, param.itemsize), xp)
