"""`kiln.nn.functional`: layers, activations and losses as functions composed from tensor ops."""

from __future__ import annotations

import functools
import math
import sys
import warnings
from typing import Sequence

import numpy as np

import kiln
from kiln import Tensor
from kiln import ops as _core
from kiln.nn.attention.bias import CausalBias
from kiln.compiler import is_compiling
from kiln.ops import op_error
from kiln.overrides import (handle_torch_function, has_torch_function,  # noqa: F401
                            has_torch_function_unary, has_torch_function_variadic)
from kiln.ops import prims as P
from kiln.nn.functional_loss import _legacy
from kiln.nn.sparse_grad import lookup_rows, wants_sparse_grad

# Activations and helpers the core already defines; re-exported under PyTorch's names.
from kiln.ops import (  # noqa: F401
    relu, relu6, hardtanh, leaky_relu, elu, selu, gelu, silu, mish, softplus, logsigmoid,
    hardsigmoid, hardswish, softsign, tanhshrink, pad, one_hot)

_REDUCTIONS = ("none", "mean", "sum")
# the public hook that names a composite's traced nodes (`# layer_norm @ model.py:12` in listings)
_composite = kiln.compiler.composite


# ----------------------------------------------------------------------------- helpers

def _pair(value, name: str = "argument") -> tuple:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * 2
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value


def _check_class_targets(target: Tensor, num_classes: int, ignore_index: int,
                         op: str) -> Tensor:
    """Out-of-range class indices (other than `ignore_index`) raise IndexError, as in PyTorch;
    returns the target to use. Traced, the check is a graph node (`check_index`), so every
    replay makes it too."""
    if is_compiling():
        return P.check_index(target, size=num_classes, op=op, kind="IndexError",
                             negative=False, ignore=ignore_index,
                             message=f"Target {{}} is out of bounds (expected class indices in "
                                     f"[0, {num_classes}) or the ignore_index)")
    if target.numel() == 0 or target.device.type != "cpu":
        return target       # on a GPU: `_nll_loss` queues the check on the device instead
    data = target.numpy(force=True)
    valid = data[data != ignore_index]
    if valid.size == 0:
        return target
    low, high = int(valid.min()), int(valid.max())
    if low < 0 or high >= num_classes:
        raise op_error(op, f"Target {low if low < 0 else high} is out of bounds (expected "
                       f"class indices in [0, {num_classes}) or the ignore_index)", IndexError)
    return target


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _check_reduction(reduction: str, allowed: Sequence[str] = _REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _constant(array: np.ndarray, like: Tensor) -> Tensor:
    """A constant table (index or divisor) as a tensor on `like`'s device."""
    return kiln.tensor(array, device=like.device)


# ----------------------------------------------------------------------------- activations

def sigmoid(input: Tensor) -> Tensor:
    return kiln.sigmoid(input)


def tanh(input: Tensor) -> Tensor:
    return kiln.tanh(input)


def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype=None) -> Tensor:
    return kiln.softmax(input, _softmax_dim(input, dim, "softmax"), dtype=dtype)


def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype=None) -> Tensor:
    return kiln.log_softmax(input, _softmax_dim(input, dim, "log_softmax"), dtype=dtype)


def softmin(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype=None) -> Tensor:
    return _core.softmin(input, _softmax_dim(input, dim, "softmin"), dtype=dtype)


def _softmax_dim(input: Tensor, dim: int | None, name: str) -> int:
    # PyTorch's legacy implicit choice when no dim is given, with its deprecation warning
    if dim is not None:
        return dim
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call "
                  "to include dim=X as an argument.", UserWarning,
                  stacklevel=_core.user_stacklevel())
    return 0 if input.ndim in (0, 1, 3) else 1


@_composite
def glu(input: Tensor, dim: int = -1) -> Tensor:
    _core.refuse_integers("glu", input)
    a, b = kiln.chunk(input, 2, dim)
    return a * kiln.sigmoid(b)


@_composite
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    norm = kiln.norm(input, p, dim, keepdim=True)
    return input / kiln.clamp_min(norm, eps)


# ----------------------------------------------------------------------------- linear

@_composite
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if weight.ndim == 2 and input.ndim >= 1 and input.shape[-1] != weight.shape[1]:
        rows = input.numel() // input.shape[-1] if input.shape[-1] else 0
        raise op_error("linear", f"mat1 and mat2 shapes cannot be multiplied "
                       f"({rows}x{input.shape[-1]} and {weight.shape[1]}x{weight.shape[0]}):"
                       f" the input's last dim is {input.shape[-1]} (input shape "
                       f"{list(input.shape)}) but the weight {list(weight.shape)} takes "
                       f"in_features={weight.shape[1]}", RuntimeError)
    out = kiln.matmul(input, weight.t()) if weight.ndim == 2 else kiln.matmul(input, weight)
    return out + bias if bias is not None else out


@_composite
def bilinear(input1: Tensor, input2: Tensor, weight: Tensor,
             bias: Tensor | None = None) -> Tensor:
    # out[..., o] = x1[..., i] W[o, i, j] x2[..., j]
    left = kiln.matmul(input1.unsqueeze(-2).unsqueeze(-2), weight)   # (..., O, 1, J)
    out = kiln.matmul(left, input2.unsqueeze(-2).unsqueeze(-1))      # (..., O, 1, 1)
    out = out.reshape(tuple(out.shape[:-2]))
    return out + bias if bias is not None else out


# ----------------------------------------------------------------------------- convolution

def _conv_output_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def _windows(x: Tensor, kernel: tuple, stride: tuple, dilation: tuple, out_hw: tuple,
             channels_last: bool = False) -> list:
    """The kh*kw shifted views x[..., i*d::s, j*d::s, ...] of an already padded input, whose
    spatial dims are (2, 3) (NCHW) or (1, 2) (NHWC with channels_last).

    Strided slices would differentiate through a scatter; instead each window is a step-1
    slice reshaped to (oh, s, ow, s) with phase 0 picked, so the backward is only pads.
    """
    hd = 1 if channels_last else 2
    shape = tuple(x.shape)
    h, w = shape[hd], shape[hd + 1]
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    lead, trail = (slice(None),) * hd, (slice(None),) * (x.ndim - hd - 2)
    strided = sh > 1 or sw > 1
    # room for the (s - 1) trailing rows/cols the reshape trick reads but never keeps
    extra_h = max(0, dh * (kh - 1) + sh * oh - h) if strided else 0
    extra_w = max(0, dw * (kw - 1) + sw * ow - w) if strided else 0
    if extra_h or extra_w:
        x = _core.pad(x, (0, 0) * len(trail) + (0, extra_w, 0, extra_h))
    windows = []
    for i in range(kh):
        for j in range(kw):
            r, q = i * dh, j * dw
            if not strided:
                windows.append(x[lead + (slice(r, r + oh), slice(q, q + ow)) + trail])
                continue
            win = x[lead + (slice(r, r + sh * oh), slice(q, q + sw * ow)) + trail]
            win = win.reshape(shape[:hd] + (oh, sh, ow, sw) + shape[hd + 2:])
            windows.append(win[lead + (slice(None), 0, slice(None), 0) + trail])
    return windows


def _conv_padding(padding, kernel: tuple, dilation: tuple, stride: tuple) -> tuple:
    """(top, bottom, left, right) from an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                             "{'valid', 'same'}")
        if stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    ph, pw = _pair(padding, "padding")
    return (ph, ph, pw, pw)


def _check_conv_input(input: Tensor, weight: Tensor, groups: int, name: str, spatial: int,
                      transposed: bool = False) -> None:
    """PyTorch's checks of a convolution's input and weight, in its words, with the shapes the
    user passed (conv1d runs as conv2d, which would otherwise report its own 4-D shapes)."""
    if input.ndim not in (spatial + 1, spatial + 2):
        raise op_error(name, f"Expected {spatial + 1}D (unbatched) or {spatial + 2}D "
                       f"(batched) input to {name}, but got input of size: "
                       f"{list(input.shape)}", RuntimeError)
    if weight.ndim != spatial + 2:
        raise op_error(name, f"expected a {spatial + 2}-D weight, got weight of size "
                       f"{list(weight.shape)}", RuntimeError)
    c = input.shape[0 if input.ndim == spatial + 1 else 1]
    want = weight.shape[0] if transposed else weight.shape[1] * groups
    if c != want:
        what = "weight of size" if not transposed else "weight of size (in, out/groups, ...)"
        raise op_error(name, f"Given groups={groups}, {what} {list(weight.shape)}, "
                       f"expected input{list(input.shape)} to have {want} channels, but "
                       f"got {c} channels instead", RuntimeError)


@_composite
def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution as im2col (kh*kw shifted views) followed by one matmul per group."""
    _check_conv_input(input, weight, groups, "conv2d", 2)
    if input.dtype is kiln.float16 and input.device.type == "cpu":
        if groups == 1 and weight.dtype is kiln.float16 and \
                (bias is None or bias.dtype is kiln.float16) and kiln.is_grad_enabled() and \
                any(t is not None and t.requires_grad for t in (input, weight, bias)):
            # (a graph break under kiln.compile: such a step runs eagerly, as bfloat16's do)
            return _HalfConv2d.apply(input, weight, bias, stride, padding, dilation)
        if weight.dtype is kiln.float16 and (bias is None or bias.dtype is kiln.float16):
            return _conv2d(input.float(), weight.float(), _float32(bias), stride, padding,
                           dilation, groups).half()
    return _conv2d(input, weight, bias, stride, padding, dilation, groups)


class _HalfConv2d(kiln.autograd.Function):
    """conv2d of float16 CPU tensors as PyTorch's CPU kernel computes it (ATen's slow_conv2d):
    forward, the product in float32 rounded once; backward, image by image, the input
    gradient's columns rounded to float16 and added into the image in float16 one window
    offset at a time, the weight and bias gradients added in float16 one image at a time.
    Rounding as PyTorch does keeps float16 training steps on PyTorch's path, where one value
    off by an ulp can flip a ReLU downstream."""

    _eager_only = ("rounds float16 step by step as PyTorch's CPU kernel does, which compiled "
                   "code does not repeat")

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(input, weight)
        ctx.conv = (stride, padding, dilation, bias is not None)
        return _conv2d(input.float(), weight.float(), _float32(bias), stride, padding,
                       dilation, 1).half()

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conv
        unbatched = input.ndim == 3
        x = (input.unsqueeze(0) if unbatched else input).float()
        g = (grad.unsqueeze(0) if unbatched else grad).float()
        stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
        out_ch, c, kh, kw = weight.shape
        top, bottom, left, right = _conv_padding(padding, (kh, kw), dilation, stride)
        x = _core.pad(x, (left, right, top, bottom))
        n, _, hp, wp = x.shape
        oh, ow = g.shape[2], g.shape[3]
        g = g.reshape(n, out_ch, oh * ow)
        w = weight.float().reshape(out_ch, c * kh * kw)
        grads = [None, None, None, None, None, None]
        if ctx.needs_input_grad[0]:
            cols = (w.t() @ g).half().float().reshape(n, c, kh, kw, oh, ow)
            image = kiln.zeros(n, c, hp, wp)
            for i in range(kh):
                for j in range(kw):
                    down = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1,
                                 stride[0])
                    across = slice(j * dilation[1], j * dilation[1] + stride[1] * (ow - 1) + 1,
                                   stride[1])
                    image[:, :, down, across] = (image[:, :, down, across] +
                                                 cols[:, :, i, j]).half().float()
            image = image[:, :, top:hp - bottom, left:wp - right]
            grads[0] = (image.squeeze(0) if unbatched else image).half()
        if ctx.needs_input_grad[1]:
            windows = unfold(x, (kh, kw), dilation=dilation, stride=stride)
            total = kiln.zeros(out_ch, c * kh * kw)
            for k in range(n):
                total = (total + g[k] @ windows[k].t()).half().float()
            grads[1] = total.reshape(weight.shape).half()
        if has_bias and ctx.needs_input_grad[2]:
            per_image = g.sum(2).half().float()
            total = kiln.zeros(out_ch)
            for k in range(n):
                total = (total + per_image[k]).half().float()
            grads[2] = total.half()
        return tuple(grads)


def _conv2d(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
            groups: int) -> Tensor:
    unbatched = input.ndim == 3
    x = input.unsqueeze(0) if unbatched else input
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    out_ch, in_per_group, kh, kw = weight.shape
    n, c, h, w = x.shape
    top, bottom, left, right = _conv_padding(padding, (kh, kw), dilation, stride)
    if top or bottom or left or right:
        x = _core.pad(x, (left, right, top, bottom))
    hp, wp = h + top + bottom, w + left + right
    oh = _conv_output_size(hp, kh, stride[0], dilation[0])
    ow = _conv_output_size(wp, kw, stride[1], dilation[1])
    if oh <= 0 or ow <= 0:
        raise RuntimeError(f"conv2d: kernel size ({kh}x{kw}) can't be greater than the padded "
                           f"input size ({hp}x{wp})")
    # im2col in channels-last order: cols[n, y, x, i, j, c] = channel c of window (i, j) at
    # (y, x), so that one 2-D matmul (N*oh*ow, kh*kw*C) @ (kh*kw*C, O) does the work (NumPy's
    # batched matmul with a broadcast weight is many times slower than one large GEMM); the
    # weight is permuted to match, (O, kh, kw, C). The unfold primitive makes the windows in
    # one copy; kh*kw slices and a stack cost ~30 ops.
    k = kh * kw
    rows = n * oh * ow
    if groups == 1 and not is_compiling():
        # eagerly, the product with its unfold inside (`unfold_matmul`): the NumPy backend
        # unfolds a few images at a time into a cache-sized buffer, and autograd keeps x, not
        # the kh*kw times larger windows. Traced, it stays unfold + matmul, the form exporters
        # read; the compiler forms the same products itself (kiln.passes.conv_products)
        out = P.unfold_matmul(x, weight.permute(0, 2, 3, 1).reshape(out_ch, k * c).t(),
                              kernel=(kh, kw), stride=stride, dilation=dilation)
        return _conv2d_epilogue(out, bias, n, oh, ow, out_ch, unbatched)
    cols = P.unfold(x, kernel=(kh, kw), stride=stride, dilation=dilation)
    if groups == 1:
        out = kiln.matmul(cols.reshape(rows, k * c),
                          weight.permute(0, 2, 3, 1).reshape(out_ch, k * c).t())
    elif in_per_group == 1 and out_ch == groups:
        # depthwise: each output channel sees one input channel; a multiply-sum, no matmul
        out = (cols.reshape(rows, k, c) * weight.reshape(out_ch, k).t()).sum(-2)
    else:
        grouped = cols.reshape(rows, k, groups, in_per_group).permute(0, 2, 1, 3) \
            .reshape(rows, groups, k * in_per_group).transpose(0, 1)
        w = weight.reshape(groups, out_ch // groups, in_per_group, k).transpose(2, 3) \
            .reshape(groups, out_ch // groups, k * in_per_group).transpose(1, 2)
        out = kiln.matmul(grouped, w).transpose(0, 1)           # (rows, G, O/G)
    return _conv2d_epilogue(out, bias, n, oh, ow, out_ch, unbatched)


def _conv2d_epilogue(out: Tensor, bias: Tensor | None, n: int, oh: int, ow: int, out_ch: int,
                     unbatched: bool) -> Tensor:
    """A conv's (N*oh*ow, O) product as an (N, O, oh, ow) view, plus the bias."""
    out = out.reshape(n, oh, ow, out_ch).permute(0, 3, 1, 2)
    if bias is not None:
        out = out + bias.reshape(1, out_ch, 1, 1)
    return out.squeeze(0) if unbatched else out


@_composite
def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """1-D convolution: a 2-D one over a height-1 image."""
    _check_conv_input(input, weight, groups, "conv1d", 1)
    single = lambda v: v if isinstance(v, str) else (0 if v is None else v if isinstance(
        v, int) else v[0])
    pad_arg = single(padding)
    if not isinstance(pad_arg, str):
        pad_arg = (0, pad_arg)
    out = _conv2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, single(stride)),
                  pad_arg, (1, single(dilation)), groups)
    return out.squeeze(-2)


def _dilate(x: Tensor, stride: tuple) -> Tensor:
    """Insert (s - 1) zeros between the pixels of an (N, C, H, W) tensor."""
    n, c, h, w = x.shape
    sh, sw = stride
    if sh == 1 and sw == 1:
        return x
    x = x.reshape(n, c, h, 1, w, 1)
    x = _core.pad(x, (0, sw - 1, 0, 0, 0, sh - 1))
    x = x.reshape(n, c, h * sh, w * sw)
    return x[:, :, :(h - 1) * sh + 1, :(w - 1) * sw + 1]


@_composite
def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """Transposed convolution: a stride-1 convolution of the zero-dilated input with the
    flipped, in/out-swapped kernel."""
    _check_conv_input(input, weight, groups, "conv_transpose2d", 2, transposed=True)
    return _conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                             dilation)


def _conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding,
                      output_padding, groups: int, dilation) -> Tensor:
    unbatched = input.ndim == 3
    x = input.unsqueeze(0) if unbatched else input
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    output_padding, dilation = _pair(output_padding, "output_padding"), _pair(dilation)
    in_ch, out_per_group, kh, kw = weight.shape
    x = _dilate(x, stride)
    ph = dilation[0] * (kh - 1) - padding[0]
    pw = dilation[1] * (kw - 1) - padding[1]
    x = _core.pad(x, (pw, pw + output_padding[1], ph, ph + output_padding[0]))
    w = weight.reshape(groups, in_ch // groups, out_per_group, kh, kw).transpose(1, 2)
    w = kiln.flip(w.reshape(groups * out_per_group, in_ch // groups, kh, kw), (2, 3))
    out = _conv2d(x, w, bias, 1, 0, dilation, groups)
    return out.squeeze(0) if unbatched else out


@_composite
def conv_transpose1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    _check_conv_input(input, weight, groups, "conv_transpose1d", 1, transposed=True)
    first = lambda v: v if isinstance(v, int) else v[0]
    out = _conv_transpose2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, first(stride)),
                           (0, first(padding)), (0, first(output_padding)), groups,
                           (1, first(dilation)))
    return out.squeeze(-2)


# ----------------------------------------------------------------------------- pooling

def _pool_geometry(h: int, w: int, kernel, stride, padding, dilation, ceil_mode: bool):
    kernel = _pair(kernel, "kernel_size")
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    padding, dilation = _pair(padding, "padding"), _pair(dilation, "dilation")
    for k, p in zip(kernel, padding):
        if p > k // 2:
            raise RuntimeError(f"pad should be at most half of effective kernel size, but got "
                               f"pad={p}, kernel_size={k}")
    out = []
    for size, k, s, p, d in zip((h, w), kernel, stride, padding, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + p:
            o -= 1         # the last window must start inside the input or left padding
        if o <= 0:
            raise RuntimeError(f"pooling: output size is too small ({h}x{w} input, kernel "
                               f"{kernel})")
        out.append(o)
    return kernel, stride, padding, dilation, tuple(out)


def _pool_pad(x: Tensor, kernel, stride, padding, dilation, out_hw, value: float) -> Tensor:
    """Pad for pooling: the given padding, plus what ceil_mode's last window reaches past."""
    h, w = x.shape[-2:]
    need_h = (out_hw[0] - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (out_hw[1] - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    bottom = max(padding[0], need_h - h - padding[0])
    right = max(padding[1], need_w - w - padding[1])
    if padding[0] or padding[1] or bottom or right:
        x = _core.pad(x, (padding[1], right, padding[0], bottom), value=value)
    return x


def _as_4d(input: Tensor, name: str):
    if input.ndim == 3:
        return input.unsqueeze(0), True
    if input.ndim != 4:
        raise RuntimeError(f"{name}: expected a 3-D or 4-D input, got shape {list(input.shape)}")
    return input, False


def _pool_windows(x: Tensor, kernel: tuple, stride: tuple, dilation: tuple,
                  out_hw: tuple) -> Tensor:
    """(kh*kw, N, C, oh, ow): each output pixel's window, kernel positions row-major, window
    position first, so reductions over it run across whole slabs (NumPy reduces a short last
    axis row by row, tens of times slower)."""
    (kh, kw), (oh, ow) = kernel, out_hw
    if stride != kernel or dilation != (1, 1):
        return kiln.stack(_windows(x, kernel, stride, dilation, out_hw), dim=0)
    # non-overlapping windows tile the input: one reshape instead of kh*kw slices and a stack
    n, c = x.shape[:2]
    if x.shape[2] != oh * kh or x.shape[3] != ow * kw:
        x = x[:, :, :oh * kh, :ow * kw]
    if _channels_last(x):
        # a channels-last image (a conv's output) stacks channels-last, copying runs of C
        # values (3-8x faster than gathering NCHW). Split through (N, H, W, C), a view of its
        # memory, the gradient's reshape back to the image copies channels-last too (an NCHW
        # copy gathers single values, ~5x slower, and leaves the layers below it mixing
        # layouts in every backward op)
        x = x.permute(0, 2, 3, 1).reshape(n, oh, kh, ow, kw, c)
        return x.permute(2, 4, 0, 1, 3, 5).reshape(kh * kw, n, oh, ow, c).permute(0, 1, 4, 2, 3)
    x = x.reshape(n, c, oh, kh, ow, kw)
    return x.permute(3, 5, 0, 1, 2, 4).reshape(kh * kw, n, c, oh, ow)


def _channels_last(x: Tensor) -> bool:
    """Whether an (N, C, ...) tensor's channels are its innermost axis in memory."""
    if x.ndim < 3 or x.shape[1] <= 1:
        return False
    strides = x.stride()
    return strides[1] == 1 and all(st > 1 for st, size in zip(strides[2:], x.shape[2:])
                                   if size > 1)


@functools.lru_cache(maxsize=64)
def _max_pool_index_table(h, w, kernel, stride, padding, dilation, out_hw) -> np.ndarray:
    """For each window position k and output pixel, its flat index into the unpadded input."""
    oh, ow = out_hw
    rows = (np.arange(oh)[None, :] * stride[0] - padding[0]
            + np.arange(kernel[0])[:, None] * dilation[0])        # (kh, oh)
    cols = (np.arange(ow)[None, :] * stride[1] - padding[1]
            + np.arange(kernel[1])[:, None] * dilation[1])        # (kw, ow)
    table = rows[:, None, :, None] * w + cols[None, :, None, :]    # (kh, kw, oh, ow)
    return table.reshape(kernel[0] * kernel[1], oh, ow).astype(np.int64)


@_composite
def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Max pooling; the gradient goes to the first maximum of each window, as in PyTorch."""
    _refuse_pool_dtype("max_pool2d", input, integers=False)
    x, unbatched = _as_4d(input, "max_pool2d")
    n, c, h, w = x.shape
    kernel, stride, padding, dilation, out_hw = _pool_geometry(
        h, w, kernel_size, stride, padding, dilation, ceil_mode)
    # eager on a GPU: one kernel launch each way and one autograd node, the same values; a
    # trace (and the CPU) records the composite below, which the compiler fuses
    fast = _core.eager_max_pool2d(x, out_hw, kernel, stride, padding, dilation, return_indices)
    if fast is not None:
        if not unbatched:
            return fast
        return (fast[0].squeeze(0), fast[1].squeeze(0)) if return_indices else fast.squeeze(0)
    # the windows are reduced in the layout NumPy keeps (a channels-last image's slab-wise);
    # the result then takes PyTorch's: its input's suggested format
    with _core.numpy_layouts():
        out, indices = _max_pool2d_windows(x, kernel, stride, padding, dilation, out_hw,
                                           return_indices)
    out = _suggested_layout(out, input)       # (an unbatched 3-D image's is row-major)
    if unbatched:
        out = out.squeeze(0)
    if not return_indices:
        return out
    indices = _suggested_layout(indices, input)
    return out, indices.squeeze(0) if unbatched else indices


def _max_pool2d_windows(x: Tensor, kernel, stride, padding, dilation, out_hw,
                        return_indices: bool) -> tuple:
    """max_pool2d's composite on the 4-D `x`: (the pooled values, their flat indices or None)."""
    n, c, h, w = x.shape
    floating = x.dtype.is_floating_point
    lowest = -math.inf if floating else int(np.iinfo(x.dtype.np).min)   # ints pool as ints
    x = _pool_pad(x, kernel, stride, padding, dilation, out_hw, lowest)
    stacked = _pool_windows(x, kernel, stride, dilation, out_hw)
    # the gradient goes to the first maximum of each window only (amax would split it among
    # ties, e.g. ReLU's zeros): mark the maxima (a NaN counts as one and propagates), keep the
    # first of them, pick it; everything reduces over the leading window axis
    with kiln.no_grad():
        top = stacked.amax(0)
        is_max = (stacked == top) | kiln.isnan(stacked)
        # earlier windows rank higher; the best-ranked maximum is the first (NumPy's argmax
        # and cumsum over the window axis are slow, these are all slab-wise ops)
        # (one-byte ranks while they fit: the where, max and compare move 4x less memory)
        k = stacked.shape[0]
        rank_dtype = kiln.uint8 if k < 256 else kiln.int32
        ranks = kiln.arange(k, 0, -1, device=x.device, dtype=rank_dtype).reshape(-1, 1, 1, 1, 1)
        best = kiln.where(is_max, ranks, 0).amax(0)     # k - (first maximum's position), >= 1
        # the mask from the constant ranks and the one-per-output `best` (not from the window
        # ranks): the compiled forward saves `best` (one byte per output while k < 256) for
        # the backward, which recomputes this compare in its kernels instead of reading a
        # k-byte mask
        first = ranks == best
    # (integers have no gradient to route: the maximum itself keeps their dtype)
    out = kiln.where(first, stacked, 0.0).sum(0) if floating else top
    if not return_indices:
        return out, None
    table = _max_pool_index_table(h, w, kernel, stride, padding, dilation, out_hw)
    table = _constant(np.moveaxis(table, 0, -1), x)                 # (oh, ow, K)
    chosen = (k - best.long()).unsqueeze(-1)                        # (N, C, oh, ow, 1)
    indices = kiln.gather(table.expand(n, c, *table.shape), -1, chosen).squeeze(-1)
    return out, indices


@_composite
def max_pool1d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    _refuse_pool_dtype("max_pool1d", input)
    return _max_pool1d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _max_pool1d(input: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool,
                return_indices: bool):
    """max_pool1d as max_pool2d over one row; also max_pool3d's depth pass, which (unlike
    PyTorch's max_pool1d) takes integer tensors."""
    first = lambda v: v if isinstance(v, int) or v is None else v[0]
    result = max_pool2d(input.unsqueeze(-2), (1, first(kernel_size)),
                        None if stride is None else (1, first(stride)), (0, first(padding)),
                        (1, first(dilation)), ceil_mode, return_indices)
    if return_indices:
        return result[0].squeeze(-2), result[1].squeeze(-2)
    return result.squeeze(-2)


def _refuse_pool_dtype(op: str, input: Tensor, integers: bool = True, int64: bool = False,
                       kind: type = NotImplementedError) -> None:
    """PyTorch's refusal of a pooling op whose CPU kernel has no loop for the input's dtype:
    bool always, the integer dtypes where `integers` (but int64 where `int64` says it has one)."""
    dtype = input.dtype
    integer = not dtype.is_floating_point and not dtype.is_complex
    if dtype is kiln.bool or integers and integer and not (int64 and dtype is kiln.int64):
        raise op_error(op, f"\"{op}\" not implemented for {dtype.name} input (as PyTorch); "
                       "pool a float tensor", kind)


@functools.lru_cache(maxsize=64)
def _avg_pool_divisor(h, w, kernel, stride, padding, out_hw, count_include_pad) -> np.ndarray:
    """PyTorch's per-output divisor: the window clipped to the padded (or the real) input."""
    sizes = []
    for size, k, s, p, o in zip((h, w), kernel, stride, padding, out_hw):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, size + p)
        full = end - start
        clipped = np.minimum(end, size) - np.maximum(start, 0)
        sizes.append(full if count_include_pad else clipped)
    return (sizes[0][:, None] * sizes[1][None, :]).astype(np.float64)


@_composite
def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    _refuse_pool_dtype("avg_pool2d", input, int64=True)
    x, unbatched = _as_4d(input, "avg_pool2d")
    n, c, h, w = x.shape
    kernel, stride, padding, dilation, out_hw = _pool_geometry(
        h, w, kernel_size, stride, padding, 1, ceil_mode)
    with _core.numpy_layouts():         # as max_pool2d: PyTorch's layout for the result only
        x = _pool_pad(x, kernel, stride, padding, dilation, out_hw,
                      0.0 if x.dtype.is_floating_point else 0)
        total = kiln.stack(_windows(x, kernel, stride, dilation, out_hw), dim=-1).sum(-1)
        if x.dtype is kiln.int64:        # PyTorch's int64 average: the sum / count, truncated
            divisor = divisor_override or _constant(_avg_pool_divisor(
                h, w, kernel, stride, padding, out_hw, count_include_pad).astype(np.int64), x)
            out = kiln.div(total, divisor, rounding_mode="trunc")
        elif divisor_override:
            out = total / divisor_override
        else:
            divisor = _avg_pool_divisor(h, w, kernel, stride, padding, out_hw,
                                        count_include_pad)
            out = total / _constant(divisor.astype(x.dtype.np if x.dtype.is_floating_point
                                                   else np.float32), x)
    out = _suggested_layout(out, input)
    return out.squeeze(0) if unbatched else out


@_composite
def avg_pool1d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    first = lambda v: v if isinstance(v, int) or v is None else v[0]
    return avg_pool2d(input.unsqueeze(-2), (1, first(kernel_size)),
                      None if stride is None else (1, first(stride)), (0, first(padding)),
                      ceil_mode, count_include_pad).squeeze(-2)


@functools.lru_cache(maxsize=64)
def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) averaging matrix over PyTorch's adaptive bins [floor(i*n/o), ceil((i+1)*n/o))."""
    m = np.zeros((out, size))
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


@_composite
def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Adaptive average pooling as two small matmuls with constant averaging matrices."""
    _refuse_pool_dtype("adaptive_avg_pool2d", input, kind=RuntimeError)
    h, w = input.shape[-2:]
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = h if oh is None else oh, w if ow is None else ow
    dtype = input.dtype.np
    rows = _constant(_adaptive_matrix(h, oh).astype(dtype), input)
    cols = _constant(_adaptive_matrix(w, ow).T.astype(dtype), input)
    return kiln.matmul(kiln.matmul(rows, input), cols)


@_composite
def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    _refuse_pool_dtype("adaptive_avg_pool1d", input, kind=RuntimeError)
    size = output_size if isinstance(output_size, int) else output_size[0]
    cols = _constant(_adaptive_matrix(input.shape[-1], size).T.astype(input.dtype.np), input)
    return kiln.matmul(input, cols)


# ----------------------------------------------------------------------------- normalization

_HALF = (kiln.float16, kiln.bfloat16)


def _float32(t: Tensor | None) -> Tensor | None:
    """A float16 or bfloat16 tensor as float32: the normalizations compute half input in
    float, as PyTorch does (the statistics of half values overflow or lose their digits)."""
    return t.float() if t is not None and t.dtype in _HALF else t


def _check_batch_norm_sizes(input: Tensor, *per_channel: Tensor | None) -> None:
    """Each per-channel tensor has one value per channel of the input (dim 1), as PyTorch
    checks; otherwise a broadcast error would name `add` or `sub` and not the layer."""
    if input.ndim < 2 and input.numel():
        raise op_error("batch_norm", f"expected an input with at least 2 dims (N, C, ...), "
                       f"got shape {list(input.shape)}", ValueError)
    c = input.shape[1] if input.ndim >= 2 else 0      # PyTorch takes an empty 1-D input
    for name, t in zip(("running_mean", "running_var", "weight", "bias"), per_channel):
        if t is not None and t.numel() != c:
            raise op_error("batch_norm", f"{name} should contain {c} elements not "
                           f"{t.numel()}: the input of shape {list(input.shape)} has {c} "
                           f"channels (dim 1), the layer was built for {t.numel()} "
                           f"(num_features)", RuntimeError)


@_composite
def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization over all dims but 1; in training, updates the running stats in place
    (unbiased variance, as PyTorch does)."""
    _check_batch_norm_sizes(input, running_mean, running_var, weight, bias)
    if input.dtype in _HALF:
        return batch_norm(input.float(), running_mean, running_var, _float32(weight),
                          _float32(bias), training, momentum, eps).to(input.dtype)
    shape = (1, -1) + (1,) * (input.ndim - 2) if input.ndim >= 2 else (-1,)
    if input.numel() == 0:       # nothing to normalize and no statistics to update
        out = input * weight.reshape(shape) if weight is not None else input.clone()
    elif training:
        count = input.numel() // input.shape[1]
        if count == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input "
                             f"size {list(input.shape)}")
        if running_mean is not None or running_var is not None:
            with kiln.no_grad():
                mean, var = P.batch_stats(input)
                if running_mean is not None:
                    _blend(running_mean, mean, momentum, momentum)
                if running_var is not None:       # the running variance is the unbiased one
                    _blend(running_var, var, momentum, momentum * count / (count - 1))
        # one primitive each way (its backward is the closed form, not ~50 composed ops)
        out = P.batch_norm(input, eps=eps)
        if weight is not None:
            out = out * weight.reshape(shape)
    else:
        # the per-channel scale is computed on the small (1, C, 1, ...) tensors, so the large
        # input sees one subtract, one multiply and one add
        scale = kiln.rsqrt(running_var.reshape(shape) + eps)
        if weight is not None:
            scale = scale * weight.reshape(shape)
        out = (input - running_mean.reshape(shape)) * scale
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _blend(running: Tensor, new: Tensor, momentum, weight) -> None:
    """running = (1 - momentum) * running + weight * new, in place; `momentum` and `weight`
    numbers or (BatchNorm's cumulative average under compile) 0-d tensors."""
    if isinstance(weight, Tensor):
        running.mul_(1 - momentum).add_(new * weight)
    else:
        running.mul_(1 - momentum).add_(new, alpha=weight)


@_composite
def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(shape):]) != shape:
        raise op_error("layer_norm", f"Given normalized_shape={list(shape)}, expected "
                       f"input with shape [*, "
                       f"{', '.join(map(str, shape))}], but got input of size "
                       f"{list(input.shape)}", RuntimeError)
    if input.dtype in _HALF:
        return layer_norm(input.float(), shape, _float32(weight), _float32(bias),
                          eps).to(input.dtype)
    axes = tuple(range(input.ndim - len(shape), input.ndim))
    mean = input.mean(axes, keepdim=True)
    centered = input - mean
    var = (centered * centered).mean(axes, keepdim=True)
    out = centered * kiln.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.contiguous()         # PyTorch's kernel writes row-major, whatever the input's


@_composite
def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    axes = tuple(range(input.ndim - len(shape), input.ndim))
    eps = eps if eps is not None else float(np.finfo(input.dtype.np).eps)
    if input.dtype in _HALF:
        return rms_norm(input.float(), shape, _float32(weight), eps).to(input.dtype)
    out = input * kiln.rsqrt((input * input).mean(axes, keepdim=True) + eps)
    return _suggested_layout(out * weight if weight is not None else out, input)


@_composite
def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    n, c = input.shape[0], input.shape[1]
    if c % num_groups:
        raise RuntimeError(f"group_norm: expected number of channels in input ({c}) to be "
                           f"divisible by num_groups ({num_groups})")
    if input.dtype in _HALF:
        return group_norm(input.float(), num_groups, _float32(weight), _float32(bias),
                          eps).to(input.dtype)
    grouped = input.reshape(n, num_groups, math.prod(input.shape[1:]) // num_groups)
    mean = grouped.mean(-1, keepdim=True)
    centered = grouped - mean
    var = (centered * centered).mean(-1, keepdim=True)
    out = (centered * kiln.rsqrt(var + eps)).reshape(tuple(input.shape))
    shape = (1, -1) + (1,) * (input.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return _suggested_layout(out, input)


def _suggested_layout(out: Tensor, input: Tensor) -> Tensor:
    """`out` laid out as PyTorch's normalization kernels lay out their results: channels-last
    where `input` is a channels-last 4-D or 5-D tensor, else row-major (their
    `suggest_memory_format`)."""
    fmt = {4: kiln.channels_last, 5: kiln.channels_last_3d}.get(input.ndim)
    if fmt is not None and input.is_contiguous(memory_format=fmt) and not input.is_contiguous():
        return out.contiguous(memory_format=fmt)
    return out.contiguous()


# ----------------------------------------------------------------------------- dropout, embedding

@_composite
def dropout(input: Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False) -> Tensor:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input.mul_(0.0) if inplace else input * 0.0
    noise = _in_memory_order(input, lambda shape: _dropout_noise(shape, p, input))
    if inplace:
        return input.mul_(noise)
    return input * noise


def _dropout_noise(shape: tuple, p: float, like: Tensor) -> Tensor:
    """PyTorch's dropout noise: Bernoulli(1 - p) draws (one uniform double each) divided by
    1 - p, in the input's dtype; the same numbers as PyTorch's for the same seed."""
    noise = kiln.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1.0 - p)
    return noise.div_(1.0 - p)


def _in_memory_order(like: Tensor, draw) -> Tensor:
    """`draw(shape)`'s random tensor laid out as `like` is in memory: PyTorch fills the noise
    of `empty_like(input)`, which keeps the input's stride order, so a transposed input
    (batch_first attention's output) gets its draws in memory order. Except where dim 1 is
    the fastest: kiln lays a conv's output (and what keeps its layout) out channels-last where
    PyTorch's is contiguous (ARCHITECTURE.md), so that layout draws in logical order."""
    if like.is_contiguous():
        return draw(tuple(like.shape))
    order = _stride_order(tuple(like.shape), like.stride())
    moving = [d for d in order if like.shape[d] > 1]
    if moving == sorted(moving) or (like.ndim >= 3 and moving[-1] == 1):
        return draw(tuple(like.shape))
    noise = draw(tuple(like.shape[d] for d in order))
    return noise.permute(*sorted(range(like.ndim), key=order.__getitem__))


def _stride_order(shape: tuple, strides: tuple) -> list:
    """The dims from slowest to fastest in memory, as PyTorch infers dense strides: an
    insertion sort by stride (equal strides: the larger dim slower) in which a broadcast dim
    (stride 0) is compared with nothing, so it keeps its place."""
    perm = list(range(len(shape)))[::-1]            # fastest first
    for i in range(1, len(perm)):
        dim1 = i
        for dim0 in range(i - 1, -1, -1):
            a, b = perm[dim0], perm[dim1]
            if strides[a] == 0 or strides[b] == 0:
                continue
            if strides[a] < strides[b] or (strides[a] == strides[b] and shape[a] <= shape[b]):
                break
            perm[dim0], perm[dim1] = b, a
            dim1 = dim0
    return perm[::-1]


def _feature_dropout(input: Tensor, p: float, training: bool) -> Tensor:
    """PyTorch's feature_dropout: one draw per entry of the first two dims (sample, channel),
    broadcast over the rest; a 2-D input therefore drops single elements, as PyTorch does."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    lead = tuple(input.shape[:2])
    return input * _dropout_noise(lead + (1,) * (input.ndim - 2), p, input)


def _unbatched_feature_dropout(input: Tensor, p: float, training: bool, batched_ndim: int,
                               name: str, inplace: bool) -> Tensor:
    if input.ndim not in (batched_ndim - 1, batched_ndim):
        raise RuntimeError(f"{name}: Expected {batched_ndim - 1}D or {batched_ndim}D input, but "
                           f"received a {input.ndim}D input")
    if not training or p == 0.0:
        return input
    if input.ndim == batched_ndim:
        out = _feature_dropout(input, p, training)
    else:
        out = _feature_dropout(input.unsqueeze(0), p, training).squeeze(0)
    return input.copy_(out) if inplace and out is not input else out


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Channel dropout over (N, C, L) or unbatched (C, L) inputs."""
    return _unbatched_feature_dropout(input, p, training, 3, "dropout1d", inplace)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Channel dropout over the first two dims, as PyTorch does for every input rank: a 3-D
    input is read as (N, C, L) and a 2-D one as (N, C) (element-wise), each with its warning."""
    if input.ndim not in (3, 4):
        warnings.warn(f"dropout2d: Received a {input.ndim}-D input to dropout2d, which is "
                      "deprecated and will result in an error in a future release. To retain "
                      "the behavior and silence this warning, please use dropout instead.",
                      stacklevel=2)
    if input.ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that "
                      "channel-wise 1D dropout behavior is desired - input is interpreted as "
                      "shape (N, C, L); use dropout1d to keep this behavior.", stacklevel=2)
    out = _feature_dropout(input, p, training)
    return input.copy_(out) if inplace and out is not input else out


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Channel dropout over (N, C, D, H, W) or unbatched (C, D, H, W) inputs."""
    if input.ndim not in (4, 5):
        warnings.warn(f"dropout3d: Received a {input.ndim}-D input to dropout3d, which is "
                      "deprecated and will result in an error in a future release; use "
                      "dropout instead.", stacklevel=2)
        out = _feature_dropout(input, p, training)
        return input.copy_(out) if inplace and out is not input else out
    return _unbatched_feature_dropout(input, p, training, 5, "dropout3d", inplace)


def _alpha_dropout(input: Tensor, p: float, training: bool, feature: bool) -> Tensor:
    """Dropout that keeps SELU's zero mean and unit variance: dropped entries take the
    saturation value, then an affine map (a, b) restores the moments (PyTorch's formula)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    alpha = 1.7580993408473766
    a = 1.0 / math.sqrt((alpha * alpha * p + 1) * (1 - p))
    shape = tuple(input.shape)
    if feature:
        shape = shape[:2] + (1,) * (input.ndim - 2)
    keep = kiln.empty(shape, dtype=input.dtype, device=input.device).bernoulli_(1.0 - p)
    return input * (keep * a) + ((keep - 1) * (alpha * a) + alpha * a * p)


def alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False,
                  inplace: bool = False) -> Tensor:
    out = _alpha_dropout(input, p, training, False)
    return input.copy_(out) if inplace and out is not input else out


def feature_alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False,
                          inplace: bool = False) -> Tensor:
    out = _alpha_dropout(input, p, training, True)
    return input.copy_(out) if inplace and out is not input else out


@_composite
def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None,
              max_norm: float | None = None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    if max_norm is not None:
        renorm_rows_(weight, input.reshape(-1), max_norm, norm_type)
    if padding_idx is not None and padding_idx < 0:
        padding_idx += weight.shape[0]
    scaled = scale_grad_by_freq and weight.requires_grad and kiln.is_grad_enabled()
    if scaled or wants_sparse_grad(weight, sparse):
        return lookup_rows(weight, input.reshape(-1), padding_idx, "embedding", bool(sparse),
                           scaled).reshape(*input.shape, weight.shape[1])
    out = _core.select_rows(weight, 0, input.reshape(-1), "embedding") \
        .reshape(*input.shape, weight.shape[1])
    if padding_idx is not None:
        # the padding row receives no gradient: its lookups are cut from the graph
        out = kiln.where((input == padding_idx).unsqueeze(-1), out.detach(), out)
    return out


def renorm_rows_(weight: Tensor, ids: Tensor, max_norm: float, norm_type: float) -> None:
    """Embedding's max_norm: each looked-up row whose norm exceeds max_norm is scaled in place
    to max_norm / (norm + 1e-7) of itself, outside autograd, as PyTorch's embedding_renorm_.
    (A repeated id writes the same scaled row again, so no unique() is needed.)"""
    with kiln.no_grad():
        rows = _core.select_rows(weight, 0, ids, "embedding")
        norms = kiln.linalg.vector_norm(rows, float(norm_type), dim=1, keepdim=True)
        scale = kiln.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
        weight[ids] = rows * scale


# ----------------------------------------------------------------------------- attention

@_composite
def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """softmax(q k^T * scale + mask) v; a boolean mask marks the positions that take part."""
    if not kiln.backends.cuda.math_sdp_enabled():
        raise RuntimeError("scaled_dot_product_attention: no viable backend: kiln's only "
                           "implementation is the math one (SDPBackend.MATH), which is turned "
                           "off; enable it (sdpa_kernel([SDPBackend.MATH, ...]) or "
                           "torch.backends.cuda.enable_math_sdp(True))")
    if isinstance(attn_mask, CausalBias):
        attn_mask, is_causal = attn_mask._sdpa_arguments(is_causal, query.device)
    lq, lk = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa and query.shape[-3] != key.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key = kiln.repeat_interleave(key, repeat, dim=-3)
        value = kiln.repeat_interleave(value, repeat, dim=-3)
    scores = kiln.matmul(query, key.transpose(-2, -1)) * scale
    causal = None
    if is_causal:       # (every row keeps its first key: never a row masked whole)
        causal = kiln.tril(kiln.ones(lq, lk, dtype=kiln.bool, device=query.device))
        if attn_mask is None:
            scores = scores.masked_fill(~causal, -math.inf)
    masked_rows = None
    if attn_mask is not None:
        if attn_mask.dtype is kiln.bool:
            keep = attn_mask if causal is None else attn_mask & causal
            keep, masked_rows = _unmask_empty_rows(keep)
            scores = scores.masked_fill(~keep, -math.inf)
        else:
            bias = attn_mask if causal is None else attn_mask.masked_fill(~causal, -math.inf)
            bias, masked_rows = _unmask_empty_rows(bias)
            scores = scores + bias
    weights = kiln.softmax(scores, -1)
    if masked_rows is not None:
        weights = weights.masked_fill(masked_rows, 0.0)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p)
    return kiln.matmul(weights, value)


def _unmask_empty_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """An attention mask (bool: True takes part; float: added, -inf masks) whose rows that mask
    every key are opened, and those rows. PyTorch's attention (since 2.5, `_safe_softmax`) gives
    0, not softmax's NaN, where a query sees no key (a padded query, a left-padded causal row),
    and a gradient of 0 there: the caller zeroes the opened rows' weights. Read from the mask,
    which is smaller than the scores it broadcasts over."""
    if mask.dtype is kiln.bool:
        rows = ~mask.any(-1, keepdim=True)
        return mask | rows, rows
    rows = (mask == -math.inf).all(-1, keepdim=True)
    return mask.masked_fill(rows, 0.0), rows


def _canonical_mask(mask: Tensor | None, dtype) -> Tensor | None:
    """A boolean 'masked out' mask becomes an additive float mask of 0 / -inf."""
    if mask is None:
        return None
    if mask.dtype is kiln.bool:
        return kiln.zeros(tuple(mask.shape), dtype=dtype, device=mask.device).masked_fill(
            mask, -math.inf)
    return mask.to(dtype)


def multi_head_attention_forward(
        query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int,
        in_proj_weight: Tensor | None, in_proj_bias: Tensor | None, bias_k, bias_v,
        add_zero_attn: bool, dropout_p: float, out_proj_weight: Tensor,
        out_proj_bias: Tensor | None, training: bool = True,
        key_padding_mask: Tensor | None = None, need_weights: bool = True,
        attn_mask: Tensor | None = None, use_separate_proj_weight: bool = False,
        q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
        v_proj_weight: Tensor | None = None, static_k=None, static_v=None,
        average_attn_weights: bool = True, is_causal: bool = False):
    """PyTorch's multi-head attention on (L, N, E) inputs (or unbatched (L, E)).

    As PyTorch's: `bias_k`/`bias_v` (1, 1, E) append one key and value to every sequence,
    `static_k`/`static_v` (N * heads, S, E / heads) replace the projected keys and values, and
    `add_zero_attn` appends a zero key and value after those; masks get a column (attended)
    for each appended key."""
    if (bias_k is None) != (bias_v is None):
        raise AssertionError("multi_head_attention_forward: bias_k and bias_v go together")
    unbatched = query.ndim == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, batch, embed_dim = query.shape
    src_len = key.shape[0]
    if embed_dim != embed_dim_to_check:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim_to_check}, but "
                             f"got {embed_dim}")
    head_dim = embed_dim // num_heads
    if use_separate_proj_weight:
        bq = bk = bv = None
        if in_proj_bias is not None:
            bq, bk, bv = kiln.chunk(in_proj_bias, 3)
        q = linear(query, q_proj_weight, bq)
        k = linear(key, k_proj_weight, bk)
        v = linear(value, v_proj_weight, bv)
    else:
        wq, wk, wv = kiln.chunk(in_proj_weight, 3)
        bq = bk = bv = None
        if in_proj_bias is not None:
            bq, bk, bv = kiln.chunk(in_proj_bias, 3)
        q, k, v = linear(query, wq, bq), linear(key, wk, bk), linear(value, wv, bv)

    mask = _canonical_mask(attn_mask, q.dtype)
    padding = _canonical_mask(key_padding_mask, q.dtype)
    appended = int(bias_k is not None) + int(bool(add_zero_attn))
    if bias_k is not None:
        k = kiln.cat([k, bias_k.reshape(1, 1, embed_dim).expand(1, batch, embed_dim)])
        v = kiln.cat([v, bias_v.reshape(1, 1, embed_dim).expand(1, batch, embed_dim)])

    # (L, N, E) -> (N, H, L, head_dim); static keys and values come as (N * H, S, head_dim)
    def heads(t, static):
        if static is not None:
            return static.reshape(batch, num_heads, static.shape[1], head_dim)
        return t.reshape(t.shape[0], batch, num_heads, head_dim).permute(1, 2, 0, 3)
    q, k, v = heads(q, None), heads(k, static_k), heads(v, static_v)
    if add_zero_attn:
        zeros = kiln.zeros(batch, num_heads, 1, head_dim, dtype=k.dtype, device=k.device)
        k, v = kiln.cat([k, zeros], 2), kiln.cat([v, zeros], 2)
    src_len = k.shape[2]
    if appended:
        mask = pad(mask, (0, appended)) if mask is not None else None
        padding = pad(padding, (0, appended)) if padding is not None else None

    if mask is not None:
        mask = mask.reshape(batch, num_heads, tgt_len, src_len) if mask.ndim == 3 else mask
    elif is_causal:
        causal = kiln.triu(kiln.ones(tgt_len, src_len, dtype=kiln.bool, device=q.device), 1)
        mask = _canonical_mask(causal, q.dtype)
    if padding is not None:
        padding = padding.reshape(batch, 1, 1, src_len)
        mask = padding if mask is None else mask + padding

    masked_rows = None
    if mask is not None and not need_weights:
        # PyTorch then attends through scaled_dot_product_attention, whose rows that mask every
        # key give 0; the weights it returns come from a plain softmax (NaN there)
        mask, masked_rows = _unmask_empty_rows(mask)
    q = q * math.sqrt(1.0 / head_dim)          # PyTorch's spelling of the scale
    if mask is not None and q.dtype in _HALF and q.device.type == "cpu":
        # PyTorch's baddbmm: the product and the mask added in float32, rounded once
        scores = (kiln.matmul(q.float(), k.float().transpose(-2, -1)) +
                  mask.float()).to(q.dtype)
    else:
        scores = kiln.matmul(q, k.transpose(-2, -1))
        if mask is not None:
            scores = scores + mask
    weights = kiln.softmax(scores, -1)
    if masked_rows is not None:
        weights = weights.masked_fill(masked_rows, 0.0)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p, training)
    out = kiln.matmul(weights, v)                                   # (N, H, L, head_dim)
    out = out.permute(2, 0, 1, 3).reshape(tgt_len, batch, embed_dim)
    out = linear(out, out_proj_weight, out_proj_bias)
    if unbatched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    if average_attn_weights:
        weights = weights.mean(1)
    if unbatched:
        weights = weights.squeeze(0)
    return out, weights


# ----------------------------------------------------------------------------- losses

def _weighted_mean_or_sum(loss: Tensor, reduction: str) -> Tensor:
    _check_reduction(reduction)
    return _reduce(loss, reduction)


def _check_same_size(input: Tensor, target: Tensor, name: str) -> None:
    if tuple(input.shape) != tuple(target.shape):
        warnings.warn(f"{name}: Using a target size ({list(target.shape)}) that is different "
                      f"to the input size ({list(input.shape)}). This will likely lead to "
                      f"incorrect results due to broadcasting. Please ensure they have the "
                      f"same size.", stacklevel=_core.user_stacklevel())


@_composite
def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
             reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    _check_same_size(input, target, "mse_loss")
    if not any(t.dtype.is_floating_point or t.dtype.is_complex for t in (input, target)):
        raise op_error("mse_loss", f"\"mse_cpu\" not implemented for {input.dtype.name} and "
                       f"{target.dtype.name} (as PyTorch): compare float tensors",
                       NotImplementedError)
    diff = input - target
    loss = diff * diff
    if weight is not None:
        loss = loss * weight
    return _weighted_mean_or_sum(loss, reduction)


@_composite
def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
            reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    _check_same_size(input, target, "l1_loss")
    loss = kiln.abs(input - target)
    if weight is not None:
        loss = loss * weight
    return _weighted_mean_or_sum(loss, reduction)


@_composite
def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                   reduction: str = "mean", beta: float = 1.0) -> Tensor:
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    _check_same_size(input, target, "smooth_l1_loss")
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    diff = kiln.abs(input - target)
    if beta == 0.0:
        return _weighted_mean_or_sum(diff, reduction)
    loss = kiln.where(diff < beta, diff * diff * (0.5 / beta), diff - 0.5 * beta)
    return _weighted_mean_or_sum(loss, reduction)


@_composite
def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    _check_same_size(input, target, "huber_loss")
    diff = kiln.abs(input - target)
    loss = kiln.where(diff < delta, diff * diff * 0.5, (diff - 0.5 * delta) * delta)
    if weight is not None:
        loss = loss * weight
    return _weighted_mean_or_sum(loss, reduction)


@_composite
def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    if tuple(input.shape) != tuple(target.shape):
        raise op_error("binary_cross_entropy", f"Using a target size ({list(target.shape)}) "
                       f"that is different to the input size ({list(input.shape)}) is "
                       f"deprecated. Please ensure they have the same size.", ValueError)
    input = _check_probabilities(input, "input")
    target = _check_probabilities(target, "target")
    # PyTorch clamps the logs at -100 so that a 0 or 1 input gives a finite loss
    log_p = kiln.clamp_min(kiln.log(input), -100.0)
    log_q = kiln.clamp_min(kiln.log(1 - input), -100.0)
    loss = -(target * log_p + (1 - target) * log_q)
    if weight is not None:
        loss = loss * weight
    return _weighted_mean_or_sum(loss, reduction)


@_composite
def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None, size_average=None,
                                     reduce=None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    if tuple(input.shape) != tuple(target.shape):
        raise op_error("binary_cross_entropy_with_logits", f"Target size "
                       f"({list(target.shape)}) must be the same as input size "
                       f"({list(input.shape)})", ValueError)
    # -log(sigmoid(x)) = log1p(exp(-|x|)) + relu(-x), stable for large |x|
    neg_log_sigmoid = kiln.log1p(kiln.exp(-kiln.abs(input))) + relu(-input)
    if pos_weight is not None:
        loss = (1 - target) * input + ((pos_weight - 1) * target + 1) * neg_log_sigmoid
    else:
        loss = (1 - target) * input + neg_log_sigmoid
    if weight is not None:
        loss = loss * weight
    return _weighted_mean_or_sum(loss, reduction)


def _check_probabilities(t: Tensor, name: str) -> Tensor:
    """binary_cross_entropy's input and target must lie in [0, 1] (NaN does not), as PyTorch
    checks: outside, the loss is NaN or silently wrong. Eagerly one min and one max; traced, a
    check_values node on every compiled replay. Returns the tensor to compute with."""
    if t.numel() == 0:
        return t
    if is_compiling():
        return _core.check_values(t, (t >= 0) & (t <= 1), "binary_cross_entropy",
                                  _outside_probabilities(name, t, "{}"), RuntimeError)
    if t.device.type != "cpu":          # on a GPU: queued, read at the next host read
        _core.check_bounds_later(t.detach(), 0.0, 1.0, "binary_cross_entropy", RuntimeError,
                                 _outside_probabilities(name, t, "{}"), inclusive=True)
        return t
    values = t.detach()
    low, high = values.min().item(), values.max().item()
    if not (low >= 0 and high <= 1):        # NaN propagates into min and max, and fails both
        raise op_error("binary_cross_entropy", _outside_probabilities(
            name, t, f"{name} values in [{float(low)}, {float(high)}]"), RuntimeError)
    return t


def _outside_probabilities(name: str, t: Tensor, got: str) -> str:
    return (f"all elements of {name} should be between 0 and 1; got {got} (shape "
            f"{list(t.shape)}). For logits, use binary_cross_entropy_with_logits "
            "(BCEWithLogitsLoss)")


def _class_last_shape(input: Tensor) -> tuple:
    """The broadcast shape of a per-class vector against an (N, C, d1, ...) input."""
    return (-1,) + (1,) * (input.ndim - 2) if input.ndim >= 2 else (-1,)


@_composite
def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class indices; 'mean' divides by the summed target weights."""
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    return _nll_loss(input, target, weight, ignore_index, reduction, "nll_loss")


def _check_class_target_shape(input: Tensor, target: Tensor, op: str) -> None:
    """PyTorch's checks and exception types: a batch-size mismatch is a ValueError, any other
    target shape a RuntimeError; the message names the op and both shapes."""
    if input.ndim < 1:
        raise op_error(op, f"expected an input with at least 1 dimension, got shape "
                       f"{list(input.shape)}", ValueError)
    if target.dtype not in (kiln.int64, kiln.uint8):      # PyTorch's kernels take only these
        raise op_error(op, f"expected target dtype to be Long or Byte (class indices), but got "
                       f"{target.dtype}")
    class_dim = 0 if input.ndim == 1 else 1
    expected = tuple(input.shape[:class_dim]) + tuple(input.shape[class_dim + 1:])
    if tuple(target.shape) == expected:
        return
    if input.ndim >= 2 and target.ndim >= 1 and target.shape[0] != input.shape[0]:
        raise op_error(op, f"Expected input batch_size ({input.shape[0]}) to match target "
                       f"batch_size ({target.shape[0]}); input shape {list(input.shape)}, "
                       f"target shape {list(target.shape)}", ValueError)
    raise op_error(op, f"Expected target size {list(expected)}, got "
                   f"{list(target.shape)} (input shape {list(input.shape)}: the target "
                   f"holds one class index per input row, without the class dim)",
                   RuntimeError)


def _check_class_weight(weight: Tensor | None, num_classes: int, op: str) -> None:
    if weight is not None and (weight.ndim != 1 or weight.shape[0] != num_classes):
        raise op_error(op, f"weight tensor should be defined either for all {num_classes} "
                       f"classes or no classes but got weight tensor of shape: "
                       f"{list(weight.shape)}")


# Compiled nll_loss / cross_entropy over at least this many classes pick the targets' values
# by a one-hot sum (`_nll_loss`); with fewer, the gather and its scatter are a few KB either way
# and the graph keeps its gather.
_ONE_HOT_PICK_MIN_CLASSES = 64


def _nll_loss(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
              reduction: str, op: str) -> Tensor:
    _check_reduction(reduction)
    _check_class_target_shape(input, target, op)
    class_dim = 0 if input.ndim == 1 else 1
    _check_class_weight(weight, input.shape[class_dim], op)
    target = _check_class_targets(target, input.shape[class_dim], ignore_index, op)
    ignored = target == ignore_index
    # ignored targets may hold any value; point them at class 0
    safe = kiln.where(ignored, 0, target)
    if target.device.type != "cpu" and not is_compiling():
        # the CPU checked above; a GPU checks on the device, read at the next host read
        num_classes = input.shape[class_dim]
        _core.check_bounds_later(safe, 0, num_classes, op, IndexError, "Target {} is out of "
                                 f"bounds (expected class indices in [0, {num_classes}) or the "
                                 "ignore_index)")
    if is_compiling() and input.ndim >= 2 and \
            input.shape[class_dim] >= _ONE_HOT_PICK_MIN_CLASSES:
        # compiled, the target's value is picked by a one-hot sum (exactly that value, and
        # exactly its gradient): a row reduction over log_softmax's output (a kernel of its
        # own, since it reads what the log_softmax kernel writes; ~0.3 ms of the LSTM step)
        # and one more term in the gradient's kernel, where a gather's gradient would be a
        # scatter into zeros as large as the input (700k values for 35x20 tokens, 1000 words)
        classes = kiln.arange(input.shape[class_dim], device=input.device).reshape(
            _class_last_shape(input))
        picked = kiln.where(safe.unsqueeze(class_dim) == classes, input, 0.0).sum(class_dim)
    else:
        picked = _core.gather_along(input, class_dim, safe.unsqueeze(class_dim), op,
                               checked=True).squeeze(class_dim)
    w = (kiln.ones((), dtype=input.dtype, device=input.device) if weight is None
         else P.take(weight, safe.reshape(-1), axis=0).reshape(tuple(safe.shape)))
    w = kiln.where(ignored, 0.0, w)
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / w.sum()


# Functions that may compute cross_entropy instead (they return NotImplemented to decline):
# kiln.distributed.tensor.parallel.loss_parallel() puts its own here while it is active.
_CROSS_ENTROPY_OVERRIDES: list = []


@_composite
def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """log_softmax + nll_loss for class indices, or soft targets given as probabilities."""
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    _check_reduction(reduction)
    for override in _CROSS_ENTROPY_OVERRIDES:
        loss = override(input, target, weight, ignore_index, reduction, label_smoothing)
        if loss is not NotImplemented:
            return loss
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    if not target.dtype.is_floating_point:
        # checked here, so a bad target is reported as cross_entropy's, before any work
        _check_class_target_shape(input, target, "cross_entropy")
    class_dim = 0 if input.ndim == 1 else 1
    num_classes = input.shape[class_dim]
    logp = kiln.log_softmax(input, class_dim)
    w_shape = _class_last_shape(input)

    if target.dtype.is_floating_point:
        if tuple(target.shape) != tuple(input.shape):
            raise op_error("cross_entropy", f"probability targets must have the input's "
                           f"shape {list(input.shape)}, got {list(target.shape)} (class "
                           f"index targets are integer tensors)", RuntimeError)
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + label_smoothing / num_classes
        terms = logp * target
        if weight is not None:
            terms = terms * weight.reshape(w_shape)
        loss = -terms.sum(class_dim)
        if reduction == "mean":
            # soft targets average over samples, not over the weights
            return loss.sum() / (input.numel() // num_classes if input.numel() else 1)
        return _reduce(loss, reduction)

    nll = _nll_loss(logp, target, weight, ignore_index, reduction, "cross_entropy")
    if label_smoothing == 0.0:
        return nll
    ignored = target == ignore_index
    terms = logp * weight.reshape(w_shape) if weight is not None else logp
    smooth = kiln.where(ignored, 0.0, -terms.sum(class_dim))
    if reduction == "mean":
        if weight is not None:
            safe = kiln.where(ignored, 0, target).reshape(-1)
            picked = kiln.where(ignored.reshape(-1), 0.0, kiln.index_select(weight, 0, safe))
            smooth = smooth.sum() / picked.sum()
        else:
            smooth = smooth.sum() / (~ignored).sum()
    elif reduction == "sum":
        smooth = smooth.sum()
    return nll * (1 - label_smoothing) + smooth * (label_smoothing / num_classes)


@_composite
def kl_div(input: Tensor, target: Tensor, size_average=None, reduce=None,
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """KL(target || exp(input)) pointwise; 'batchmean' divides the sum by the batch size."""
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    _check_reduction(reduction, _REDUCTIONS + ("batchmean",))
    if reduction == "mean":
        warnings.warn("reduction: 'mean' divides the total loss by both the batch size and the "
                      "support size.'batchmean' divides only by the batch size, and aligns with "
                      "the KL div math definition.'mean' will be changed to behave the same as "
                      "'batchmean' in the next major release.",
                      stacklevel=_core.user_stacklevel())
    if log_target:
        loss = kiln.exp(target) * (target - input)
    else:
        # xlogy: a zero target contributes 0, not 0 * log 0
        safe_log = kiln.log(kiln.where(target > 0, target, 1.0))
        loss = kiln.where(target > 0, target * safe_log, 0.0) - target * input
    if reduction == "batchmean":
        return loss.sum() / (input.shape[0] if input.ndim else 1)
    return _reduce(loss, reduction)


@_composite
def poisson_nll_loss(input: Tensor, target: Tensor, log_input: bool = True, full: bool = False,
                     size_average=None, eps: float = 1e-8, reduce=None,
                     reduction: str = "mean") -> Tensor:
    reduction = _legacy(size_average, reduce, reduction)   # PyTorch's deprecated flags
    if log_input:
        loss = kiln.exp(input) - target * input
    else:
        loss = input - target * kiln.log(input + eps)
    if full:
        stirling = target * kiln.log(kiln.where(target > 1, target, 1.0)) - target + 0.5 * \
            kiln.log(2 * math.pi * kiln.where(target > 1, target, 1.0))
        loss = loss + kiln.where(target > 1, stirling, 0.0)
    return _weighted_mean_or_sum(loss, reduction)


@_composite
def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """sum(x1/|x1| * x2/|x2|) over dim, after broadcasting x1 with x2 (a norm counts the
    repeats); as PyTorch, each norm is at least eps, a floor its gradient does not see."""
    x1, x2 = kiln.broadcast_tensors(x1, x2)

    def unit(x: Tensor) -> Tensor:
        norm = x.norm(2, dim, keepdim=True)
        return x / (norm + (norm.clamp_min(eps) - norm).detach())
    return (unit(x1) * unit(x2)).sum(dim)


# functions beyond the core set live in their own files and are re-exported here
from kiln.nn.functional_spatial import *  # noqa: E402,F401,F403
from kiln.nn.functional_activation import *  # noqa: E402,F401,F403
from kiln.nn.functional_loss import *  # noqa: E402,F401,F403

_core.apply_nn_grad_names(sys.modules[__name__])  # MseLossBackward0, as PyTorch names them
_core.install_autocast(sys.modules[__name__])   # autocast's casts on linear, conv, losses
# the forms PyTorch's nn.functional binds to ATen with out= (2.13), whose out must have the
# result's dtype; normalize's divides into out, casting as division does
for _name in ("linear", "gelu", "logsigmoid", "softplus", "softshrink", "hardshrink",
              "avg_pool2d", "avg_pool3d", "normalize"):
    globals()[_name] = _core.with_out(globals()[_name], exact_dtype=_name != "normalize")
del _name
