"""Spatial functions of `kiln.nn.functional` beyond 2-D conv and pooling: pixel and channel
shuffles, 3-D convolution and pooling, adaptive max pooling, LP pooling, fold/unfold,
interpolation, unpooling, instance and local-response norms, distances and embedding bags.

Each is a composition of kiln tensor ops (often of the 2-D functions in `functional`), so
autograd and tracing see through it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

import kiln
from kiln import Tensor
from kiln.ops import check_indices, op_error
from kiln.nn.sparse_grad import lookup_rows, wants_sparse_grad


# the public hook that names a composite's traced nodes (`# conv3d @ model.py:12` in listings)
_composite = kiln.compiler.composite


def _F():
    """`kiln.nn.functional` (its 2-D convolutions and pools), read at call time: that module
    re-exports this file's functions at its end, so this file does not import it."""
    return kiln.nn.functional


__all__ = ["pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
           "conv3d", "conv_transpose3d", "conv_tbc", "max_pool3d", "avg_pool3d",
           "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
           "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
           "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
           "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices",
           "lp_pool1d", "lp_pool2d", "lp_pool3d", "max_unpool1d", "max_unpool2d",
           "max_unpool3d", "unfold", "fold", "interpolate", "upsample", "upsample_nearest",
           "upsample_bilinear", "instance_norm", "local_response_norm", "embedding_bag",
           "affine_grid", "grid_sample", "fractional_max_pool2d", "fractional_max_pool3d",
           "fractional_max_pool2d_with_indices", "fractional_max_pool3d_with_indices"]


def _ntuple(value, n: int, name: str = "argument") -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return tuple(value) * n
        if len(value) != n:
            raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value}")
        return tuple(int(v) for v in value)
    return (int(value),) * n


# ----------------------------------------------------------------------------- shuffles

def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """(*, C*r*r, H, W) -> (*, C, H*r, W*r): sub-pixel convolution's rearrangement."""
    r = int(upscale_factor)
    *lead, c, h, w = input.shape
    if input.ndim < 3 or c % (r * r):
        raise RuntimeError(f"pixel_shuffle expects its input's 'channel' dimension to be "
                           f"divisible by the square of upscale_factor, but input.size(-3)={c} "
                           f"is not divisible by {r * r}")
    k = len(lead)
    x = input.reshape(*lead, c // (r * r), r, r, h, w)
    x = x.permute(*range(k), k, k + 3, k + 1, k + 4, k + 2)
    return x.reshape(*lead, c // (r * r), h * r, w * r)


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """(*, C, H*r, W*r) -> (*, C*r*r, H, W), the inverse of pixel_shuffle."""
    r = int(downscale_factor)
    *lead, c, h, w = input.shape
    if input.ndim < 3 or h % r or w % r:
        raise RuntimeError(f"pixel_unshuffle expects height and width to be divisible by "
                           f"downscale_factor, but input.size(-2)={h}, input.size(-1)={w} and "
                           f"downscale_factor={r}")
    k = len(lead)
    x = input.reshape(*lead, c, h // r, r, w // r, r)
    x = x.permute(*range(k), k, k + 2, k + 4, k + 1, k + 3)
    return x.reshape(*lead, c * r * r, h // r, w // r)


def channel_shuffle(input: Tensor, groups: int) -> Tensor:
    """(N, g*k, *) -> channels regrouped as k*g (ShuffleNet's shuffle)."""
    n, c, *rest = input.shape
    if c % groups:
        raise RuntimeError(f"channel_shuffle: number of channels ({c}) must be divisible by "
                           f"groups ({groups})")
    x = input.reshape(n, groups, c // groups, *rest).transpose(1, 2)
    return x.reshape(n, c, *rest)


native_channel_shuffle = channel_shuffle


# ----------------------------------------------------------------------------- 3-D convolution

@_composite
def conv3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """3-D convolution as a sum over the kernel's depth of 2-D convolutions of depth slices."""
    unbatched = input.ndim == 4
    x = input.unsqueeze(0) if unbatched else input
    if x.ndim != 5:
        raise RuntimeError(f"conv3d: expected a 4-D or 5-D input, got shape {list(input.shape)}")
    stride, dilation = _ntuple(stride, 3, "stride"), _ntuple(dilation, 3, "dilation")
    kd, kh, kw = weight.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            total = [d * (k - 1) for d, k in zip(dilation, (kd, kh, kw))]
            pads = (total[2] // 2, total[2] - total[2] // 2, total[1] // 2,
                    total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
        else:
            raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                             "{'valid', 'same'}")
    else:
        pd, ph, pw = _ntuple(padding, 3, "padding")
        pads = (pw, pw, ph, ph, pd, pd)
    if any(pads):
        x = _F().pad(x, pads)
    n, c, depth, h, w = x.shape
    out_d = (depth - dilation[0] * (kd - 1) - 1) // stride[0] + 1
    if out_d <= 0:
        raise RuntimeError(f"conv3d: kernel size ({kd}x{kh}x{kw}) can't be greater than the "
                           f"padded input size ({depth}x{h}x{w})")
    out = None
    for i in range(kd):
        start = i * dilation[0]
        # the depth slices this kernel plane meets, as one batch of 2-D images
        planes = x[:, :, start:start + stride[0] * (out_d - 1) + 1:stride[0]]
        planes = planes.transpose(1, 2).reshape(n * out_d, c, h, w)
        part = _F().conv2d(planes, weight[:, :, i], None, stride[1:], 0, dilation[1:], groups)
        out = part if out is None else out + part
    out = out.reshape(n, out_d, *out.shape[1:]).transpose(1, 2)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1, 1)
    return out.squeeze(0) if unbatched else out


def _dilate_nd(x: Tensor, stride: tuple) -> Tensor:
    """Insert (s - 1) zeros between the entries of the trailing len(stride) dims."""
    k = len(stride)
    for axis, s in zip(range(x.ndim - k, x.ndim), stride):
        if s == 1:
            continue
        size = x.shape[axis]
        x = x.unsqueeze(axis + 1)
        pad = [0, 0] * (x.ndim - axis - 2) + [0, s - 1]
        x = _F().pad(x, pad)
        shape = list(x.shape)
        shape[axis:axis + 2] = [size * s]
        x = x.reshape(shape)
        x = x.narrow(axis, 0, (size - 1) * s + 1)
    return x


@_composite
def conv_transpose3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """A stride-1 3-D convolution of the zero-dilated input with the flipped kernel."""
    unbatched = input.ndim == 4
    x = input.unsqueeze(0) if unbatched else input
    stride, padding = _ntuple(stride, 3, "stride"), _ntuple(padding, 3, "padding")
    output_padding, dilation = _ntuple(output_padding, 3), _ntuple(dilation, 3)
    in_ch, out_per_group, kd, kh, kw = weight.shape
    x = _dilate_nd(x, stride)
    p = [d * (k - 1) - q for d, k, q in zip(dilation, (kd, kh, kw), padding)]
    x = _F().pad(x, (p[2], p[2] + output_padding[2], p[1], p[1] + output_padding[1],
                  p[0], p[0] + output_padding[0]))
    w = weight.reshape(groups, in_ch // groups, out_per_group, kd, kh, kw).transpose(1, 2)
    w = kiln.flip(w.reshape(groups * out_per_group, in_ch // groups, kd, kh, kw), (2, 3, 4))
    out = conv3d(x, w, bias, 1, 0, dilation, groups)
    return out.squeeze(0) if unbatched else out


@_composite
def conv_tbc(input: Tensor, weight: Tensor, bias: Tensor, pad: int = 0) -> Tensor:
    """1-D convolution over a (time, batch, channels) input with a (k, in, out) weight."""
    x = input.permute(1, 2, 0)
    out = _F().conv1d(x, weight.permute(2, 1, 0), bias, padding=pad)
    return out.permute(2, 0, 1)


# ----------------------------------------------------------------------------- pooling

def _move_last(x: Tensor, axis: int) -> Tensor:
    return x.movedim(axis, -1)


@_composite
def max_pool1d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = True):
    return _F().max_pool1d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


@_composite
def max_pool2d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = True):
    return _F().max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


@_composite
def max_pool3d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """3-D max pooling, separably: 2-D over (H, W) per depth, then 1-D over depth. The first
    maximum in (d, h, w) order wins, as in PyTorch's scan."""
    unbatched = input.ndim == 4
    x = input.unsqueeze(0) if unbatched else input
    k = _ntuple(kernel_size, 3, "kernel_size")
    s = k if stride is None or stride == [] or stride == () else _ntuple(stride, 3, "stride")
    p, d = _ntuple(padding, 3, "padding"), _ntuple(dilation, 3, "dilation")
    n, c, depth, h, w = x.shape
    planes = x.reshape(n, c * depth, h, w)
    hw, hw_idx = _F().max_pool2d(planes, k[1:], s[1:], p[1:], d[1:], ceil_mode, True)
    oh, ow = hw.shape[-2:]
    cols = hw.reshape(n, c, depth, oh * ow).transpose(2, 3).reshape(n, c * oh * ow, depth)
    out, d_idx = _F()._max_pool1d(cols, k[0], s[0], p[0], d[0], ceil_mode, True)
    od = out.shape[-1]
    out = out.reshape(n, c, oh, ow, od).permute(0, 1, 4, 2, 3)
    if unbatched:
        out = out.squeeze(0)
    if not return_indices:
        return out
    # the flat (h, w) index the 2-D pass chose at the depth the 1-D pass chose
    hw_idx = hw_idx.reshape(n, c, depth, oh * ow).transpose(2, 3).reshape(n, c * oh * ow, depth)
    chosen = kiln.gather(hw_idx, 2, d_idx)
    indices = (d_idx * (h * w) + chosen).reshape(n, c, oh, ow, od).permute(0, 1, 4, 2, 3)
    return out, indices.squeeze(0) if unbatched else indices


@_composite
def max_pool3d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = True):
    return max_pool3d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


@_composite
def avg_pool3d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """3-D average pooling, separably: 2-D over (H, W), then 1-D over depth (each window's
    divisor is the product of its per-dim sizes, so the composition is exact). Integers are
    summed separably and divided once, truncating, as PyTorch's integer average."""
    unbatched = input.ndim == 4
    x = input.unsqueeze(0) if unbatched else input
    k = _ntuple(kernel_size, 3, "kernel_size")
    s = k if stride is None or stride == [] or stride == () else _ntuple(stride, 3, "stride")
    p = _ntuple(padding, 3, "padding")
    n, c, depth, h, w = x.shape
    integer = not x.dtype.is_floating_point
    one = 1 if divisor_override or integer else None
    hw = _F().avg_pool2d(x.reshape(n, c * depth, h, w), k[1:], s[1:], p[1:], ceil_mode,
                      count_include_pad, one)
    oh, ow = hw.shape[-2:]
    cols = hw.reshape(n, c, depth, oh * ow).transpose(2, 3).reshape(n * c * oh * ow, 1, 1,
                                                                     depth)
    out = _F().avg_pool2d(cols, (1, k[0]), (1, s[0]), (0, p[0]), ceil_mode, count_include_pad,
                       one)
    od = out.shape[-1]
    out = out.reshape(n, c, oh, ow, od).permute(0, 1, 4, 2, 3)
    if integer:
        if not divisor_override:
            sizes = _F()._avg_pool_divisor(depth, h * w, (k[0], 1), (s[0], 1), (p[0], 0),
                                           (od, 1), count_include_pad)[:, 0]
            sizes = sizes[:, None, None] * _F()._avg_pool_divisor(
                h, w, k[1:], s[1:], p[1:], (oh, ow), count_include_pad)
        divisor = divisor_override or _F()._constant(sizes.astype(np.int64), x)
        out = kiln.div(out, divisor, rounding_mode="trunc")
    elif divisor_override:
        out = out / divisor_override
    return out.squeeze(0) if unbatched else out


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _output_size(output_size, dims: int, spatial: tuple) -> tuple:
    sizes = _ntuple(output_size, dims, "output_size") if not (
        isinstance(output_size, (list, tuple)) and None in output_size) else tuple(output_size)
    return tuple(spatial[i] if o is None else int(o) for i, o in enumerate(sizes))


@_composite
def adaptive_avg_pool3d(input: Tensor, output_size) -> Tensor:
    """Adaptive average pooling: one averaging matmul per spatial dim."""
    out_size = _output_size(output_size, 3, tuple(input.shape[-3:]))
    x = input
    for axis, o in zip(range(-3, 0), out_size):
        size = x.shape[axis]
        m = np.zeros((size, o), dtype=x.dtype.np)
        for j, (a, b) in enumerate(_adaptive_bins(size, o)):
            m[a:b, j] = 1.0 / (b - a)
        x = kiln.matmul(x.movedim(axis, -1), kiln.tensor(m, device=x.device)).movedim(-1, axis)
    return x


def _adaptive_max(input: Tensor, output_size, dims: int, return_indices: bool):
    """Adaptive max pooling by gathering each output cell's window maximum (PyTorch's bins)."""
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f"adaptive_max_pool{dims}d: not implemented for "
                                  f"{input.dtype.name} input (as PyTorch); pool a float tensor")
    spatial = tuple(input.shape[-dims:])
    lead = tuple(input.shape[:-dims])
    out_size = _output_size(output_size, dims, spatial)
    flat = input.reshape(*lead, -1)
    strides = np.cumprod((1,) + spatial[::-1])[:-1][::-1]
    bins = [_adaptive_bins(size, o) for size, o in zip(spatial, out_size)]
    values, indices = [], []
    for cell in np.ndindex(*out_size):
        ranges = [np.arange(*bins[k][cell[k]]) for k in range(dims)]
        grid = np.meshgrid(*ranges, indexing="ij")
        positions = sum(g * st for g, st in zip(grid, strides)).reshape(-1)
        window = kiln.index_select(flat, -1, kiln.tensor(positions, device=input.device))
        local = window.argmax(-1, keepdim=True)
        values.append(kiln.gather(window, -1, local))
        table = kiln.tensor(positions, device=input.device).expand(*lead, len(positions))
        indices.append(kiln.gather(table, -1, local))
    out = kiln.cat(values, -1).reshape(*lead, *out_size)
    if not return_indices:
        return out
    return out, kiln.cat(indices, -1).reshape(*lead, *out_size)


@_composite
def adaptive_max_pool1d(input: Tensor, output_size, return_indices: bool = False):
    return _adaptive_max(input, output_size, 1, return_indices)


@_composite
def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    return _adaptive_max(input, output_size, 2, return_indices)


@_composite
def adaptive_max_pool3d(input: Tensor, output_size, return_indices: bool = False):
    return _adaptive_max(input, output_size, 3, return_indices)


@_composite
def adaptive_max_pool1d_with_indices(input: Tensor, output_size, return_indices: bool = True):
    return _adaptive_max(input, output_size, 1, True)


@_composite
def adaptive_max_pool2d_with_indices(input: Tensor, output_size, return_indices: bool = True):
    return _adaptive_max(input, output_size, 2, True)


@_composite
def adaptive_max_pool3d_with_indices(input: Tensor, output_size, return_indices: bool = True):
    return _adaptive_max(input, output_size, 3, True)


def _lp_finish(out: Tensor, norm_type: float, window: int) -> Tensor:
    return (kiln.sign(out) * _F().relu(out.abs())).mul(window).pow(1.0 / norm_type)


@_composite
def lp_pool1d(input: Tensor, norm_type: float, kernel_size: int, stride=None,
              ceil_mode: bool = False) -> Tensor:
    """(sum over the window of x^p)^(1/p), through average pooling of x^p."""
    out = _F().avg_pool1d(input.pow(norm_type), kernel_size, stride, 0, ceil_mode)
    return _lp_finish(out, norm_type, int(_ntuple(kernel_size, 1)[0]))


@_composite
def lp_pool2d(input: Tensor, norm_type: float, kernel_size, stride=None,
              ceil_mode: bool = False) -> Tensor:
    kh, kw = _ntuple(kernel_size, 2)
    out = _F().avg_pool2d(input.pow(norm_type), (kh, kw), stride, 0, ceil_mode)
    return _lp_finish(out, norm_type, kh * kw)


@_composite
def lp_pool3d(input: Tensor, norm_type: float, kernel_size, stride=None,
              ceil_mode: bool = False) -> Tensor:
    kd, kh, kw = _ntuple(kernel_size, 3)
    out = avg_pool3d(input.pow(norm_type), (kd, kh, kw), stride, 0, ceil_mode)
    return _lp_finish(out, norm_type, kd * kh * kw)


def _max_unpool(input: Tensor, indices: Tensor, kernel_size, stride, padding, output_size,
                dims: int) -> Tensor:
    k = _ntuple(kernel_size, dims, "kernel_size")
    s = k if stride is None else _ntuple(stride, dims, "stride")
    p = _ntuple(padding, dims, "padding")
    spatial = tuple(input.shape[-dims:])
    if output_size is None:
        out = tuple((i - 1) * st - 2 * pd + kk for i, st, pd, kk in zip(spatial, s, p, k))
    else:
        out = tuple(int(v) for v in tuple(output_size)[-dims:])
    lead = tuple(input.shape[:-dims])
    flat_in = input.reshape(*lead, -1)
    size = int(np.prod(out))
    target = kiln.zeros(*lead, size, dtype=input.dtype, device=input.device)
    # checked here, so that a bad index is reported as max_unpool's, not as the scatter's
    where = check_indices(indices.reshape(*lead, -1), size, f"max_unpool{dims}d",
                          f"indices (output of size {'x'.join(map(str, out))}): invalid max "
                          "index")
    result = target.scatter(len(lead), where, flat_in)
    return result.reshape(*lead, *out)


@_composite
def max_unpool1d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    """Put each pooled value back at the position max_pool1d took it from; zeros elsewhere."""
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 1)


@_composite
def max_unpool2d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 2)


@_composite
def max_unpool3d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 3)


# ----------------------------------------------------------------------------- fold / unfold

@_composite
def unfold(input: Tensor, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """im2col: (N, C, H, W) -> (N, C*kh*kw, L), channel-major then kernel position."""
    if input.ndim not in (3, 4):
        raise op_error("unfold", f"expected a 3-D (unbatched) or 4-D (batched) input, got shape "
                       f"{list(input.shape)}", IndexError)
    unbatched = input.ndim == 3
    x = input.unsqueeze(0) if unbatched else input
    k, d = _ntuple(kernel_size, 2), _ntuple(dilation, 2)
    p, s = _ntuple(padding, 2), _ntuple(stride, 2)
    if min(k + d + s) <= 0 or min(p) < 0:
        raise op_error("unfold", f"kernel_size {k}, dilation {d} and stride {s} must be "
                       f"positive and padding {p} non-negative")
    if any(p):
        x = _F().pad(x, (p[1], p[1], p[0], p[0]))
    n, c, h, w = x.shape
    oh = (h - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w - d[1] * (k[1] - 1) - 1) // s[1] + 1
    if oh < 1 or ow < 1:
        raise op_error("unfold", f"input of spatial size {tuple(input.shape[-2:])} with "
                       f"kernel_size={k}, dilation={d}, padding={p}, stride={s} gives sliding "
                       f"blocks of shape ({oh}, {ow}), which is too small (non-positive)")
    windows = _F()._windows(x, k, s, d, (oh, ow))
    out = kiln.stack(windows, 2).reshape(n, c * k[0] * k[1], oh * ow)
    return out.squeeze(0) if unbatched else out


@_composite
def fold(input: Tensor, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """col2im, the adjoint of unfold: overlapping blocks are summed into (N, C, H, W)."""
    unbatched = input.ndim == 2
    x = input.unsqueeze(0) if unbatched else input
    out_hw, k = _ntuple(output_size, 2), _ntuple(kernel_size, 2)
    d, p, s = _ntuple(dilation, 2), _ntuple(padding, 2), _ntuple(stride, 2)
    hp, wp = out_hw[0] + 2 * p[0], out_hw[1] + 2 * p[1]
    oh = (hp - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (wp - d[1] * (k[1] - 1) - 1) // s[1] + 1
    n, ck, length = x.shape
    if ck % (k[0] * k[1]) or length != oh * ow:
        raise op_error("fold", f"expected input of shape (N, C*{k[0] * k[1]}, {oh * ow}) for "
                       f"output_size={out_hw}, kernel_size={k}, dilation={d}, padding={p}, "
                       f"stride={s}, got {list(input.shape)}")
    c = ck // (k[0] * k[1])
    blocks = x.reshape(n, c, k[0] * k[1], oh, ow)
    out = None
    for i in range(k[0]):
        for j in range(k[1]):
            block = _dilate_nd(blocks[:, :, i * k[1] + j], s)
            top, left = i * d[0], j * d[1]
            placed = _F().pad(block, (left, wp - left - block.shape[-1],
                                   top, hp - top - block.shape[-2]))
            out = placed if out is None else out + placed
    out = out[:, :, p[0]:p[0] + out_hw[0], p[1]:p[1] + out_hw[1]]
    return out.squeeze(0) if unbatched else out


# ----------------------------------------------------------------------------- interpolation

def _source_scale(in_size: int, out_size: int, align_corners: bool, scale) -> float:
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return 1.0 / scale if scale is not None and scale > 0 else in_size / out_size


def _resize_axis(x: Tensor, axis: int, out_size: int, mode: str, align_corners: bool,
                 scale, weight_dtype=None) -> Tensor:
    """Resample one axis: nearest picks a source index, linear and cubic blend neighbours
    (with weights rounded to `weight_dtype` first, when given)."""
    in_size = x.shape[axis]
    ratio = _source_scale(in_size, out_size, align_corners, scale)
    dst = np.arange(out_size, dtype=np.float64)
    device = x.device
    take = lambda idx: kiln.index_select(x, axis, kiln.tensor(idx.astype(np.int64),
                                                              device=device))
    shape = [1] * x.ndim
    shape[axis] = out_size
    rounded = (lambda w: w.astype(weight_dtype.np).astype(np.float64)) if weight_dtype else \
        (lambda w: w)
    weight = lambda w: kiln.tensor(rounded(w).astype(x.dtype.np).reshape(shape), device=device)
    if mode == "nearest":
        src = np.minimum(np.floor(dst * np.float32(ratio)), in_size - 1)
        return take(src)
    if mode == "nearest-exact":
        src = np.minimum(np.floor((dst + 0.5) * np.float32(ratio)), in_size - 1)
        return take(src)
    if mode == "linear":
        src = dst * ratio if align_corners else np.maximum((dst + 0.5) * ratio - 0.5, 0.0)
        low = np.minimum(np.floor(src), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        lam = src - low
        return take(low) * weight(1 - lam) + take(high) * weight(lam)
    if mode == "cubic":
        src = dst * ratio if align_corners else (dst + 0.5) * ratio - 0.5
        base = np.floor(src)
        t = src - base
        a = -0.75

        def near(z):       # |z| <= 1
            return ((a + 2) * z - (a + 3)) * z * z + 1

        def far(z):        # 1 < |z| < 2
            return ((a * z - 5 * a) * z + 8 * a) * z - 4 * a
        weights = [far(t + 1), near(t), near(1 - t), far(2 - t)]
        out = None
        for offset, wk in zip((-1, 0, 1, 2), weights):
            part = take(np.clip(base + offset, 0, in_size - 1)) * weight(wk)
            out = part if out is None else out + part
        return out
    raise ValueError(f"unsupported interpolation mode {mode!r}")


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                antialias: bool = False) -> Tensor:
    """Resize the spatial dims (all but the first two) by `size` or `scale_factor`."""
    dims = input.ndim - 2
    if dims < 1:
        raise ValueError(f"interpolate: expected a 3-D, 4-D or 5-D input, got "
                         f"{input.ndim}-D")
    if antialias:
        raise NotImplementedError("interpolate: antialias=True is not supported in kiln")
    linear_modes = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}
    if mode in linear_modes and linear_modes[mode] != dims:
        raise NotImplementedError(f"Got {input.ndim}D input, but {mode} mode needs "
                                  f"{linear_modes[mode] + 2}D input")
    if align_corners is not None and mode not in linear_modes:
        raise ValueError("align_corners option can only be set with the interpolating modes: "
                         "linear | bilinear | bicubic | trilinear")
    if not input.dtype.is_floating_point and mode != "area" and not (
            mode.startswith("nearest") and input.dtype is kiln.uint8):
        raise NotImplementedError(f"interpolate: mode {mode!r} is not implemented for "
                                  f"{input.dtype.name} input (as PyTorch, which resizes uint8 "
                                  "with 'nearest' only); interpolate a float tensor")
    align = bool(align_corners)
    spatial = tuple(input.shape[2:])
    if (size is None) == (scale_factor is None):
        raise op_error("interpolate", "either size or scale_factor should be defined"
                       if size is None else "only one of size or scale_factor should be defined",
                       ValueError)
    for name, value in (("size", size), ("scale_factor", scale_factor)):
        if isinstance(value, (list, tuple)) and len(value) != dims:
            raise op_error("interpolate", f"{name} must have one entry per spatial dim: the "
                           f"input has spatial dims {list(spatial)}, got {name} {value}",
                           ValueError)
    if size is not None:
        out_size = _ntuple(size, dims, "size")
        scales = [None] * dims
    else:
        scales = [float(f) for f in (scale_factor if isinstance(scale_factor, (list, tuple))
                                     else [scale_factor] * dims)]
        out_size = tuple(int(math.floor(n * f)) for n, f in zip(spatial, scales))
        if recompute_scale_factor:
            scales = [None] * dims
    if min(spatial + out_size) <= 0:
        raise op_error("interpolate", f"input and output sizes should be greater than 0, got "
                       f"input {list(spatial)} and output {list(out_size)}"
                       + ("" if size is not None else f" (scale_factor {scale_factor})"))
    if mode == "area":
        pool = {1: _F().adaptive_avg_pool1d, 2: _F().adaptive_avg_pool2d,
                3: adaptive_avg_pool3d}[dims]
        return pool(input, out_size)
    kind = {"nearest": "nearest", "nearest-exact": "nearest-exact", "linear": "linear",
            "bilinear": "linear", "trilinear": "linear", "bicubic": "cubic"}.get(mode)
    if kind is None:
        raise NotImplementedError(f"interpolate: mode {mode!r} is not supported")
    half = input.dtype if input.dtype in (kiln.float16, kiln.bfloat16) and \
        kind in ("linear", "cubic") and input.device.type == "cpu" else None
    # half input blends in float32 and rounds once, as PyTorch's CPU kernels; its bicubic
    # kernel keeps the weights in the input's dtype
    x = input if half is None else input.float()
    weight_dtype = half if kind == "cubic" else None
    for k in range(dims):
        x = _resize_axis(x, 2 + k, out_size[k], kind, align, scales[k], weight_dtype)
    return x if half is None else x.to(half)


def upsample(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",
             align_corners: bool | None = None) -> Tensor:
    return interpolate(input, size, scale_factor, mode, align_corners)


def upsample_nearest(input: Tensor, size=None, scale_factor=None) -> Tensor:
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input: Tensor, size=None, scale_factor=None) -> Tensor:
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)


# ----------------------------------------------------------------------------- normalization

def instance_norm(input: Tensor, running_mean: Tensor | None = None,
                  running_var: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalize each (sample, channel) over its spatial dims; with running statistics, update
    them by the batch average of the per-instance statistics (unbiased variance). Half input
    (float16, bfloat16) is normalized in float32 and rounded once, as PyTorch's CPU kernel."""
    if input.dtype in (kiln.float16, kiln.bfloat16):
        def wide(t):
            return t.float() if t is not None and t.dtype is input.dtype else t
        stats = wide(running_mean), wide(running_var)
        out = instance_norm(input.float(), *stats, wide(weight), wide(bias), use_input_stats,
                            momentum, eps).to(input.dtype)
        with kiln.no_grad():
            for kept, wide_stat in zip((running_mean, running_var), stats):
                if kept is not None and wide_stat is not kept and use_input_stats:
                    kept.copy_(wide_stat)
        return out
    axes = tuple(range(2, input.ndim))
    shape = (1, -1) + (1,) * (input.ndim - 2)
    if use_input_stats:
        mean = input.mean(axes, keepdim=True)
        var = ((input - mean) ** 2).mean(axes, keepdim=True)
        if running_mean is not None and running_var is not None:
            count = int(np.prod([input.shape[a] for a in axes]))
            with kiln.no_grad():
                batch_mean = mean.detach().reshape(input.shape[0], -1).mean(0)
                unbiased = var.detach().reshape(input.shape[0], -1).mean(0) * (
                    count / max(count - 1, 1))
                running_mean.mul_(1 - momentum).add_(batch_mean * momentum)
                running_var.mul_(1 - momentum).add_(unbiased * momentum)
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    out = (input - mean) / kiln.sqrt(var + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out.contiguous()         # PyTorch's kernel writes row-major, whatever the input's


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> Tensor:
    """x / (k + alpha * mean of x^2 over `size` neighbouring channels)^beta."""
    if input.ndim < 3:
        raise ValueError(f"Expected 3D or higher dimensionality input (got {input.ndim} "
                         f"dimensions)")
    if input.numel() == 0:          # PyTorch returns an empty input as it is, any dtype
        return input
    squares = input * input
    pad = [0, 0] * (input.ndim - 2) + [size // 2, (size - 1) // 2]
    padded = _F().pad(squares, pad)
    channels = input.shape[1]
    total = None
    for i in range(size):
        part = padded[:, i:i + channels]
        total = part if total is None else total + part
    div = (total / size * alpha + k) ** beta
    return input / div


# ----------------------------------------------------------------------------- embedding bags

def _checked_offsets(offsets: Tensor, length: int) -> Tensor:
    """embedding_bag's offsets checked as PyTorch checks them (the first 0, none past the
    input's `length`), and non-decreasing (PyTorch reads a decreasing one unchecked): eagerly
    on the CPU by value, elsewhere (a GPU, a compiled replay) by check_index on the range."""
    if not offsets.numel():
        return offsets
    if offsets.device.type == "cpu" and not kiln.compiler.is_compiling():
        values = offsets.numpy(force=True)
        if values[0] != 0:
            raise op_error("embedding_bag", f"offsets[0] has to be 0 (the first bag starts "
                           f"at position 0), got {int(values[0])}")
        if values[-1] > length:
            raise op_error("embedding_bag", f"offsets[-1] can not be greater than the "
                           f"input's length {length}, got {int(values[-1])}")
        if values.size > 1 and (np.diff(values) < 0).any():
            raise op_error("embedding_bag", f"offsets must be non-decreasing, got "
                           f"{values.tolist()}")
        return offsets
    first = check_indices(offsets[:1], 1, "embedding_bag", "offsets[0] (must be 0)")
    rest = check_indices(offsets[1:], length + 1, "embedding_bag", "offsets")
    return kiln.cat([first, rest])


def embedding_bag(input: Tensor, weight: Tensor, offsets: Tensor | None = None,
                  max_norm: float | None = None, norm_type: float = 2,
                  scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False,
                  per_sample_weights: Tensor | None = None, include_last_offset: bool = False,
                  padding_idx: int | None = None) -> Tensor:
    """Sum, mean or max of the embeddings of each bag: the rows of a 2-D input, or the slices
    of a 1-D input between `offsets`. Empty bags give zeros; padding_idx entries are skipped;
    `scale_grad_by_freq` divides each looked-up row's gradient by its id's count."""
    if mode not in ("sum", "mean", "max"):
        raise ValueError(f"mode has to be one of sum, mean or max, got {mode!r}")
    if sparse and mode == "max":
        raise ValueError("max mode does not support sparse weights")
    if scale_grad_by_freq and mode == "max":
        raise ValueError("max mode does not support scaling the gradient by the frequency")
    if per_sample_weights is not None and mode != "sum":
        raise NotImplementedError(f"embedding_bag: per_sample_weights was not None. "
                                  f"per_sample_weights is only supported for mode='sum' (got "
                                  f"mode='{mode}'). Please open a feature request on GitHub.")
    # bag membership as a (bags, ids) 0/1 matrix built from tensor ops, so the ids and offsets
    # are never read into Python and a compiled step traces through with no graph break
    if input.ndim == 2:
        bags, length = input.shape
        flat_ids = input.reshape(-1)
        position = kiln.arange(bags * length, device=weight.device)
        bag = kiln.arange(bags, device=weight.device).unsqueeze(1)
        member = (position.unsqueeze(0) // max(length, 1)) == bag
    else:
        if offsets is None:
            raise ValueError("offsets has to be a 1D Tensor but got None")
        flat_ids = input
        offsets = _checked_offsets(offsets.reshape(-1).to(kiln.int64), input.shape[0])
        total = kiln.full((1,), input.shape[0], dtype=kiln.int64, device=weight.device)
        if include_last_offset:
            starts, ends = offsets[:-1], offsets[1:]
        else:
            starts, ends = offsets, kiln.cat([offsets[1:], total])
        position = kiln.arange(input.shape[0], device=weight.device).unsqueeze(0)
        member = (position >= starts.unsqueeze(1)) & (position < ends.unsqueeze(1))
    flat_ids = check_indices(flat_ids.to(kiln.int64), weight.shape[0], "embedding_bag",
                             "input")
    if max_norm is not None:
        _F().renorm_rows_(weight, flat_ids, max_norm, norm_type)
    if padding_idx is not None:
        if padding_idx < 0:
            padding_idx += weight.shape[0]
        member = member & (flat_ids != padding_idx).unsqueeze(0)
    scaled = scale_grad_by_freq and weight.requires_grad and kiln.is_grad_enabled()
    if scaled or wants_sparse_grad(weight, sparse):
        rows = lookup_rows(weight, flat_ids, padding_idx, "embedding_bag",
                           wants_sparse_grad(weight, sparse), scaled)
    else:
        rows = kiln.index_select(weight, 0, flat_ids)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.reshape(-1, 1)
    if mode == "max":
        filled = kiln.where(member.unsqueeze(-1), rows.unsqueeze(0),
                            kiln.full_like(rows.unsqueeze(0), -math.inf))
        best = filled.amax(1)
        empty = (member.sum(1) == 0).unsqueeze(-1)
        return kiln.where(empty, kiln.zeros_like(best), best)
    summed = kiln.matmul(member.to(weight.dtype), rows)
    if mode == "mean":
        # the sum over the bag, then divided by its size, as PyTorch computes the mean
        counts = member.sum(1, keepdim=True).clamp(min=1).to(weight.dtype)
        return summed / counts
    return summed


# ----------------------------------------------------------------------------- sampling grids

def _base_coords(size: int, align_corners: bool) -> np.ndarray:
    if size <= 1:
        return np.zeros(max(size, 1))
    coords = np.linspace(-1.0, 1.0, size)
    return coords if align_corners else coords * (size - 1) / size


def affine_grid(theta: Tensor, size, align_corners: bool | None = None) -> Tensor:
    """The (N, H, W, 2) or (N, D, H, W, 3) sampling grid of the affine maps `theta`."""
    align = bool(align_corners)
    size = [int(v) for v in size]
    if len(size) == 4:
        n, _, h, w = size
        ys, xs = np.meshgrid(_base_coords(h, align), _base_coords(w, align), indexing="ij")
        base = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(1, h * w, 3)
        out_shape = (n, h, w, 2)
    elif len(size) == 5:
        n, _, d, h, w = size
        zs, ys, xs = np.meshgrid(_base_coords(d, align), _base_coords(h, align),
                                 _base_coords(w, align), indexing="ij")
        base = np.stack([xs, ys, zs, np.ones_like(xs)], -1).reshape(1, d * h * w, 4)
        out_shape = (n, d, h, w, 3)
    else:
        raise NotImplementedError(f"affine_grid only supports 4D and 5D sizes, got {size}")
    base_t = kiln.tensor(base.astype(theta.dtype.np), device=theta.device)
    return kiln.matmul(base_t, theta.transpose(1, 2)).reshape(*out_shape)


def _unnormalize(coord: Tensor, size: int, align_corners: bool) -> Tensor:
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _reflect(coord: Tensor, low: float, high: float) -> Tensor:
    """Reflect coordinates into [low, high] (PyTorch's reflect_coordinates)."""
    if high <= low:
        return kiln.zeros_like(coord)
    span = high - low
    x = (coord - low).abs()
    flips = kiln.floor(x / span)
    extra = x - flips * span
    even = kiln.remainder(flips, 2) == 0
    return kiln.where(even, extra + low, span - extra + low)


def _pad_coords(coord: Tensor, size: int, padding_mode: str, align: bool) -> Tensor:
    """A source coordinate moved inside the input as `padding_mode` says (zeros: unchanged)."""
    if padding_mode == "border":
        return coord.clamp(0, size - 1)
    if padding_mode == "reflection":
        coord = _reflect(coord, 0, size - 1) if align else _reflect(coord, -0.5, size - 0.5)
        return coord.clamp(0, size - 1)
    return coord


def _cubic_weights(t: Tensor) -> list[Tensor]:
    """PyTorch's bicubic convolution weights (A = -0.75) of the taps at -1, 0, 1, 2 from a
    point t in [0, 1) past the tap at 0."""
    a = -0.75

    def near(x: Tensor) -> Tensor:           # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:            # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def grid_sample(input: Tensor, grid: Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool | None = None) -> Tensor:
    """Sample a (N, C, H, W) input at the (N, Ho, Wo, 2) normalized points of `grid`, or a
    (N, C, D, H, W) input at (N, Do, Ho, Wo, 3) points (grid's last dim is x, y[, z]):
    bilinear (trilinear in 3-D), nearest, or bicubic (2-D); zeros, border or reflection
    padding. Bicubic pads each of its 4 x 4 taps rather than the point, as PyTorch."""
    dims = input.ndim - 2
    if dims not in (2, 3) or grid.ndim != input.ndim or grid.shape[-1] != dims:
        raise RuntimeError(f"grid_sample: expected a 4-D input with a (N, H, W, 2) grid or a 5-D "
                           f"input with a (N, D, H, W, 3) grid, got input "
                           f"{list(input.shape)} and grid {list(grid.shape)}")
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise ValueError(f"nn.functional.grid_sample(): expected mode to be 'bilinear', "
                         f"'nearest' or 'bicubic', but got: '{mode}'")
    if mode == "bicubic" and dims == 3:
        raise RuntimeError("grid_sampler(): bicubic interpolation only supports 4D input")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"grid_sample: padding_mode must be zeros, border or reflection, got "
                         f"{padding_mode!r}")
    align = bool(align_corners)
    n, c = input.shape[:2]
    sizes, out = tuple(input.shape[2:]), tuple(grid.shape[1:-1])
    cells = int(np.prod(out))
    # source coordinates in the order of the input's spatial dims ((D,) H, W)
    coords = [_unnormalize(grid[..., dims - 1 - d], sizes[d], align) for d in range(dims)]
    flat = input.reshape(n, c, int(np.prod(sizes)))
    strides = np.cumprod((1,) + sizes[::-1])[:-1][::-1]

    def sample(points: list[Tensor]) -> Tensor:
        """The input at integer-valued points; 0 outside it."""
        valid, index = None, None
        for p, size, stride in zip(points, sizes, strides):
            inside = (p >= 0) & (p <= size - 1)
            valid = inside if valid is None else valid & inside
            # integer arithmetic: a float16 index is not exact past 2048
            term = p.clamp(0, size - 1).long() * int(stride)
            index = term if index is None else index + term
        index = index.reshape(n, 1, cells)
        values = kiln.gather(flat, 2, index.expand(n, c, cells)).reshape(n, c, *out)
        return kiln.where(valid.unsqueeze(1), values, kiln.zeros_like(values))

    if mode == "bicubic":
        x0, y0 = kiln.floor(coords[1]), kiln.floor(coords[0])
        wx, wy = _cubic_weights(coords[1] - x0), _cubic_weights(coords[0] - y0)
        total = None
        for i in range(4):
            y = _pad_coords(y0 + (i - 1), sizes[0], padding_mode, align)
            for j in range(4):
                x = _pad_coords(x0 + (j - 1), sizes[1], padding_mode, align)
                term = sample([y, x]) * (wy[i] * wx[j]).unsqueeze(1)
                total = term if total is None else total + term
        return total
    coords = [_pad_coords(p, size, padding_mode, align) for p, size in zip(coords, sizes)]
    if mode == "nearest":
        return sample([kiln.round(p) for p in coords])
    lows = [kiln.floor(p) for p in coords]
    highs = [p - low for p, low in zip(coords, lows)]          # the weights of the upper taps
    total = None
    for corner in itertools.product((0, 1), repeat=dims):
        weight = None
        for bit, p_high in zip(corner, highs):
            part = p_high if bit else 1 - p_high
            weight = part if weight is None else weight * part
        term = sample([low + bit for low, bit in zip(lows, corner)]) * weight.unsqueeze(1)
        total = term if total is None else total + term
    return total


# ----------------------------------------------------------------------------- fractional pooling

def _fractional_starts(u: Tensor, size: int, out: int, kernel: int) -> Tensor:
    """Window starts of one dim, (N, C, out), for the random samples u (N, C): PyTorch's
    interval rule in u's floating type, floor((i + u) * a) - floor(u * a) with
    a = (size - k) / (out - 1), and the last window flush with the end."""
    last = kiln.full(tuple(u.shape) + (1,), size - kernel, dtype=kiln.int64, device=u.device)
    if out == 1:
        return last
    alpha = (size - kernel) / (out - 1) if u.dtype == kiln.float64 else \
        float(np.float32(size - kernel) / np.float32(out - 1))
    i = kiln.arange(out - 1, dtype=u.dtype, device=u.device)
    u = u.unsqueeze(-1)
    starts = ((i + u) * alpha).to(kiln.int64) - (u * alpha).to(kiln.int64)
    return kiln.cat([starts, last], -1)


def _fractional_max_pool(input: Tensor, kernel_size, output_size, output_ratio,
                         return_indices: bool, samples: Tensor | None, dims: int):
    unbatched = input.ndim == dims + 1
    x = input.unsqueeze(0) if unbatched else input
    n, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    k = _ntuple(kernel_size, dims, "kernel_size")
    if output_size is None:
        if output_ratio is None:
            raise ValueError("fractional_max_pool requires specifying either an output_size or "
                             "an output_ratio")
        ratio = output_ratio if isinstance(output_ratio, (list, tuple)) else \
            (output_ratio,) * dims
        output_size = tuple(int(size * r) for size, r in zip(spatial, ratio))
    out = _ntuple(output_size, dims, "output_size")
    for size, kk, o in zip(spatial, k, out):
        if o + kk - 1 > size:
            raise RuntimeError(f"fractional_max_pool: output size {out} too large for input "
                               f"{spatial} and kernel {k}")
    if samples is None:
        samples = kiln.rand((n, c, dims), dtype=x.dtype, device=x.device)
    # the window table as tensor ops on the samples (no read into Python: it traces)
    u = samples.detach().to(kiln.float32 if x.dtype == kiln.float32 else kiln.float64)
    strides = np.cumprod((1,) + spatial[::-1])[:-1][::-1]
    offsets = np.stack(np.meshgrid(*[np.arange(kk) for kk in k], indexing="ij"), -1)
    offsets = offsets.reshape(-1, dims) @ strides                       # (K,)
    order = [1, 0] if dims == 2 else [0, 1, 2]   # PyTorch's sample order: (W, H), but (T, H, W)
    base = 0
    for d in range(dims):
        starts = _fractional_starts(u[:, :, order[d]], spatial[d], out[d], k[d])
        shape = (n, c) + tuple(out[d] if e == d else 1 for e in range(dims))
        base = base + starts.reshape(shape) * int(strides[d])          # (N, C, *out)
    cells = int(np.prod(out))          # sizes spelled out: -1 is ambiguous for an empty batch
    flat = x.reshape(n, c, int(np.prod(spatial)))
    index = (base.reshape(n, c, cells, 1) + kiln.tensor(offsets, device=x.device)).reshape(
        n, c, cells * len(offsets))
    windows = kiln.gather(flat, 2, index).reshape(n, c, cells, len(offsets))
    best = windows.argmax(-1, keepdim=True)
    values = kiln.gather(windows, 3, best).squeeze(-1).reshape(n, c, *out)
    if unbatched:
        values = values.squeeze(0)
    if not return_indices:
        return values
    chosen = kiln.gather(index.reshape(n, c, cells, len(offsets)), 3, best).squeeze(-1)
    chosen = chosen.reshape(n, c, *out)
    return values, chosen.squeeze(0) if unbatched else chosen


@_composite
def fractional_max_pool2d(input: Tensor, kernel_size, output_size=None, output_ratio=None,
                          return_indices: bool = False, _random_samples: Tensor | None = None):
    """Max pooling over pseudo-random overlapping windows that shrink the input by a
    fractional factor (Graham, "Fractional Max-Pooling")."""
    return _fractional_max_pool(input, kernel_size, output_size, output_ratio, return_indices,
                                _random_samples, 2)


@_composite
def fractional_max_pool3d(input: Tensor, kernel_size, output_size=None, output_ratio=None,
                          return_indices: bool = False, _random_samples: Tensor | None = None):
    return _fractional_max_pool(input, kernel_size, output_size, output_ratio, return_indices,
                                _random_samples, 3)


@_composite
def fractional_max_pool2d_with_indices(input: Tensor, kernel_size, output_size=None,
                                       output_ratio=None, return_indices: bool = True,
                                       _random_samples: Tensor | None = None):
    return _fractional_max_pool(input, kernel_size, output_size, output_ratio, True,
                                _random_samples, 2)


@_composite
def fractional_max_pool3d_with_indices(input: Tensor, kernel_size, output_size=None,
                                       output_ratio=None, return_indices: bool = True,
                                       _random_samples: Tensor | None = None):
    return _fractional_max_pool(input, kernel_size, output_size, output_ratio, True,
                                _random_samples, 3)
