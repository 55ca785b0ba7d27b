"""Folding an eval-mode BatchNorm into the convolution or linear layer before it."""

from __future__ import annotations

import copy

import kiln
from kiln import Tensor
from kiln.nn.parameter import Parameter

__all__ = ["fuse_conv_bn_eval", "fuse_conv_bn_weights", "fuse_linear_bn_eval",
           "fuse_linear_bn_weights"]


def fuse_conv_bn_weights(conv_w: Tensor, conv_b: Tensor | None, bn_rm: Tensor, bn_rv: Tensor,
                         bn_eps: float, bn_w: Tensor | None, bn_b: Tensor | None,
                         transpose: bool = False) -> tuple[Parameter, Parameter]:
    """Weights w * gamma / sqrt(var + eps) (per output channel) and bias
    (b - mean) * gamma / sqrt(var + eps) + beta."""
    if conv_b is None:
        conv_b = kiln.zeros_like(bn_rm)
    if bn_w is None:
        bn_w = kiln.ones_like(bn_rm)
    if bn_b is None:
        bn_b = kiln.zeros_like(bn_rm)
    rsqrt = (bn_rv + bn_eps).rsqrt()
    scale = bn_w * rsqrt
    shape = [1] * conv_w.ndim
    shape[1 if transpose else 0] = -1
    fused_w = (conv_w * scale.reshape(shape)).to(conv_w.dtype)
    # PyTorch's order of the products, so the folded bias is the same float32 number
    fused_b = ((conv_b - bn_rm) * rsqrt * bn_w + bn_b).to(conv_w.dtype)
    return (Parameter(fused_w.detach(), conv_w.requires_grad),
            Parameter(fused_b.detach(), conv_b.requires_grad))


def fuse_conv_bn_eval(conv, bn, transpose: bool = False):
    """A copy of `conv` that computes conv followed by `bn` in eval mode."""
    if conv.training or bn.training:
        raise ValueError("Fusion only for eval!")
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(
        fused.weight, fused.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
        transpose)
    return fused


def fuse_linear_bn_weights(linear_w: Tensor, linear_b: Tensor | None, bn_rm: Tensor,
                           bn_rv: Tensor, bn_eps: float, bn_w: Tensor,
                           bn_b: Tensor) -> tuple[Parameter, Parameter]:
    if linear_b is None:
        linear_b = kiln.zeros_like(bn_rm)
    scale = bn_w * (bn_rv + bn_eps).rsqrt()
    fused_w = linear_w * scale.unsqueeze(-1)
    fused_b = (linear_b - bn_rm) * scale + bn_b
    return (Parameter(fused_w.detach(), linear_w.requires_grad),
            Parameter(fused_b.detach(), linear_b.requires_grad))


def fuse_linear_bn_eval(linear, bn):
    if linear.training or bn.training:
        raise ValueError("Fusion only for eval!")
    if linear.out_features != bn.num_features:
        raise ValueError("To fuse, linear.out_features must equal bn.num_features")
    fused = copy.deepcopy(linear)
    fused.weight, fused.bias = fuse_linear_bn_weights(
        fused.weight, fused.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return fused
