"""Eager max pooling on cuda tensors: one kernel launch forward, one backward, one autograd node.

`kiln.nn.functional.max_pool2d` is a composite (pad, window stack, amax, compares, ranks,
where, sum): about 17 device calls forward and 10 backward on a GPU, where each call costs the
host microseconds. Outside a trace, on a cuda tensor, it calls `eager_max_pool2d` here first,
which runs `kiln.runtime.pool_gpu`'s kernels (one launch each way, the same values as the
composite: the first maximum of each window, a NaN counting as one) and records one autograd
node with the whole op's gradient. A trace still records the composite: the compiler fuses it
and relies on its form. The nodes' primitives below exist only for autograd (like softmax's
eager node); they are never registered, traced or compiled.

Each node keeps the forward's window positions (`arg`, int32, one per output). The gradient
of the pooling is `pool_gpu.backward` (each input pixel gathers the gradients of the windows
that chose it); under create_graph that result is itself a node, whose gradient is
`pool_gpu.gather` (the grad-grad at the chosen pixels), which is the pooling node again.
"""

from __future__ import annotations

from kiln.ir import dtypes as dt
from kiln.ir.ops import Primitive
from kiln.runtime import pool_gpu
from kiln.tracer import autograd as _autograd
from kiln.tracer.dispatch_mode import ACTIVE as _MODES
from kiln.tracer.tensor import STATE, TRACING, Tensor


def _gathered(src: Tensor, arg: Tensor, geometry: tuple) -> Tensor:
    """`src` (N, C, H, W) at the pixels the forward chose (the gradient of its backward, under
    create_graph); differentiable in turn under grad mode, its gradient being the backward."""
    data = pool_gpu.gather(src.device.xp, src._data, arg._data, geometry)
    result = Tensor._make(data, src.dtype, src.device)
    if src.requires_grad and STATE.grad_enabled:
        _autograd.record(_POOL, (src, arg), {"geometry": geometry}, result)
    return result


def _scattered(g: Tensor, arg: Tensor, size: tuple, geometry: tuple) -> Tensor:
    """The gradient of max pooling an image of `size` for output gradient `g`; differentiable
    under grad mode (create_graph)."""
    data = pool_gpu.backward(g.device.xp, g._data, arg._data, size, geometry)
    result = Tensor._make(data, g.dtype, g.device)
    if g.requires_grad and STATE.grad_enabled:
        _autograd.record(_POOL_BACKWARD, (g, arg), {"size": size, "geometry": geometry}, result)
    return result


def _pool_grad(g, out, x, arg, geometry):
    if g.dtype is not x.dtype:          # an upstream gradient given in another dtype
        g = g.to(x.dtype)
    return (_scattered(g, arg, tuple(x.shape[2:]), geometry), None)


def _pool_backward_grad(gg, out, g, arg, size, geometry):
    # the backward is linear in g and does not depend on the pooled values otherwise
    return (_gathered(gg, arg, geometry), None)


# the rules read only the window positions (input 1), never the output or the image, so an
# in-place write into either after the pooling leaves the gradient as it was
_POOL = Primitive("max_pool2d_with_indices", "custom", None, None, _pool_grad, 2, reads=(1,),
                  doc="eager max_pool2d's autograd node on cuda (never traced)")
_POOL_BACKWARD = Primitive("max_pool2d_with_indices_backward", "custom", None, None,
                           _pool_backward_grad, 2, reads=(1,),
                           doc="its gradient's node under create_graph (never traced)")
_autograd.show_inputs(_POOL, 1)        # the window indices are the rule's, not an input


def eager_max_pool2d(x: Tensor, out_hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
                     dilation: tuple, return_indices: bool = False):
    """Max pooling of the 4-D cuda tensor `x` by the fast path, or None where the caller's
    composite runs instead (a trace, a CPU tensor, a dtype or size the kernels do not take, a
    view whose autograd history is stale). The geometry is the caller's, already checked.
    Returns the output, or (output, int64 indices) with `return_indices`."""
    if type(x) is not Tensor or x.device.type != "cuda" or (
            TRACING[0] and STATE.tracer is not None) or _MODES[0] and STATE.dispatch_modes:
        return None
    if x._base is not None and x._base[3] != x._version[0]:
        return None                     # a stale view: the dispatcher refreshes its history
    geometry = (tuple(out_hw), tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
    if not pool_gpu.usable(x._data, geometry):
        return None
    arrays = pool_gpu.forward(x.device.xp, x._data, geometry, return_indices)
    out = Tensor._make(arrays[0], x.dtype, x.device)
    if x.requires_grad and STATE.grad_enabled:
        arg = Tensor._make(arrays[1], dt.int32, x.device)
        _autograd.record(_POOL, (x, arg), {"geometry": geometry}, out)
        _autograd.set_name(out.grad_fn, "MaxPool2DWithIndicesBackward0")    # PyTorch's name
    if not return_indices:
        return out
    return out, Tensor._make(arrays[2], dt.int64, x.device)


__all__ = ["eager_max_pool2d"]
