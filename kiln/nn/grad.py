"""`kiln.nn.grad`: the gradients of a convolution with respect to its input and its weight, as
`torch.nn.grad` gives them (custom autograd Functions call these in their backward).

A convolution is linear in its input and in its weight, so each gradient is the vector-Jacobian
product of the convolution at any point; kiln takes it by autograd at zeros of the requested
size. The result is differentiable with respect to the other operand and `grad_output` when
grad mode is on and they require grad (a double backward through a custom Function).
"""

from __future__ import annotations

import kiln
import kiln.nn.functional as F

__all__ = ["conv1d_input", "conv1d_weight", "conv2d_input", "conv2d_weight", "conv3d_input",
           "conv3d_weight"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _vjp(dims: int, wrt: str, size, other, grad_output, stride, padding, dilation, groups):
    name = f"conv{dims}d_{wrt}"
    size = tuple(size)
    if len(size) != dims + 2:
        raise ValueError(f"{name}: expected a size of {dims + 2} dims, got {list(size)}")
    create = kiln.is_grad_enabled() and (other.requires_grad or grad_output.requires_grad)
    with kiln.enable_grad():
        point = kiln.zeros(size, dtype=grad_output.dtype, device=grad_output.device,
                           requires_grad=True)
        x, w = (point, other) if wrt == "input" else (other, point)
        out = _CONV[dims](x, w, None, stride, padding, dilation, groups)
    if tuple(out.shape) != tuple(grad_output.shape):
        raise RuntimeError(f"{name}: grad_output has shape {list(grad_output.shape)}, but the "
                           f"convolution gives {list(out.shape)} for these sizes and "
                           f"arguments")
    (grad,) = kiln.autograd.grad(out, point, grad_output, create_graph=create)
    return grad


def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _vjp(1, "input", input_size, weight, grad_output, stride, padding, dilation, groups)


def conv1d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _vjp(1, "weight", weight_size, input, grad_output, stride, padding, dilation, groups)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _vjp(2, "input", input_size, weight, grad_output, stride, padding, dilation, groups)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _vjp(2, "weight", weight_size, input, grad_output, stride, padding, dilation, groups)


def conv3d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _vjp(3, "input", input_size, weight, grad_output, stride, padding, dilation, groups)


def conv3d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _vjp(3, "weight", weight_size, input, grad_output, stride, padding, dilation, groups)
