"""Eager max pooling on CuPy arrays: one Triton kernel launch forward, one backward.

The kernels are `kiln.codegen.pool_triton`'s; here each is rendered and its launcher prepared
once per shape, layout, dtype and thread (as `kiln.runtime.cupy_backend` does for the eager
convolution kernels), then only launched. Inputs are read in place in any layout whose
elements fill their span of memory (C order, channels-last, a transpose); anything else (a
broadcast gradient) is copied to C order first. Outputs are new C-contiguous arrays.

`geometry` below is the pooling's `(out_hw, kernel, stride, padding, dilation)`, each a pair,
as `kiln.nn.functional._pool_geometry` computes it.
"""

from __future__ import annotations

from kiln.codegen.pool_triton import DTYPES, render_backward, render_forward, render_gather
from kiln.runtime.cupy_backend import _cached, _dense
from kiln.runtime.triton_launch import CudaKernelLauncher

_FLOATS = {d.np_dtype: d for d in DTYPES}
_INT32 = 2 ** 31 - 1        # the kernels index with 32-bit integers


def usable(x, geometry: tuple) -> bool:
    """Whether the kernels take a 4-D array `x` pooled with `geometry`: a dtype they support,
    nothing empty, every index within 32 bits."""
    out_hw = geometry[0]
    n, c = x.shape[:2]
    return x.dtype in _FLOATS and x.size > 0 and max(x.size, n * c * out_hw[0] * out_hw[1]) \
        <= _INT32


def forward(xp, x, geometry: tuple, indices: bool = False) -> tuple:
    """(out, arg) or with `indices` (out, arg, index) of max pooling the (N, C, H, W) array
    `x`: out its dtype, arg int32 window positions (what `backward` and `gather` read), index
    int64 flat positions into each input plane (PyTorch's indices), all (N, C, OH, OW)."""
    x, strides = _dense(xp, x)
    out_hw = geometry[0]
    launch = _cached(("max_pool2d_forward", x.shape, strides, x.dtype, geometry, indices),
                     lambda: CudaKernelLauncher(render_forward(
                         x.shape, *geometry, _FLOATS[x.dtype], strides, indices), tune=False))
    shape = tuple(x.shape[:2]) + tuple(out_hw)
    outputs = [xp.empty(shape, x.dtype), xp.empty(shape, xp.int32)]
    if indices:
        outputs.append(xp.empty(shape, xp.int64))
    launch([x], outputs)
    return tuple(outputs)


def backward(xp, g, arg, size: tuple, geometry: tuple):
    """The gradient of max pooling an image of `size` (H, W) for its (N, C, OH, OW) output
    gradient `g`, from the forward's `arg`: an (N, C, H, W) array of g's dtype."""
    g, strides = _dense(xp, g)
    shape = tuple(g.shape[:2]) + tuple(size)
    launch = _cached(("max_pool2d_backward", shape, strides, g.dtype, geometry),
                     lambda: CudaKernelLauncher(render_backward(
                         shape, *geometry, _FLOATS[g.dtype], strides), tune=False))
    dx = xp.empty(shape, g.dtype)
    launch([g, arg], [dx])
    return dx


def gather(xp, src, arg, geometry: tuple):
    """`src` (N, C, H, W) at the pixels the forward chose (its `arg`): (N, C, OH, OW), 0 where
    a window chose padding; the gradient of `backward` with respect to its `g`."""
    src, strides = _dense(xp, src)
    launch = _cached(("max_pool2d_gather", src.shape, strides, src.dtype, geometry),
                     lambda: CudaKernelLauncher(render_gather(
                         src.shape, *geometry, _FLOATS[src.dtype], strides), tune=False))
    out = xp.empty(arg.shape, src.dtype)
    launch([src, arg], [out])
    return out


__all__ = ["backward", "forward", "gather", "usable"]
