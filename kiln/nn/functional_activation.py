"""Activation functions of `kiln.nn.functional` with PyTorch's full signatures (`inplace=`)
and the ones the core set lacks: celu, threshold, hard/soft shrink, prelu, rrelu, gumbel-softmax,
plus the in-place spellings (`relu_`, `elu_`, ...)."""

from __future__ import annotations

import numpy as np

import kiln
from kiln import Tensor
from kiln import ops as _core

__all__ = ["relu", "relu_", "relu6", "elu", "elu_", "selu", "selu_", "celu", "celu_",
           "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "silu", "mish", "hardsigmoid",
           "hardswish", "threshold", "threshold_", "hardshrink", "softshrink", "prelu", "rrelu",
           "rrelu_", "gumbel_softmax"]
# the public hook that names a composite's traced nodes (`# celu @ model.py:12` in listings)
_composite = kiln.compiler.composite


def _maybe_inplace(input: Tensor, out: Tensor, inplace: bool) -> Tensor:
    return input.copy_(out) if inplace else out


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.relu(input), inplace)


def relu_(input: Tensor) -> Tensor:
    return relu(input, inplace=True)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.relu6(input), inplace)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.elu(input, alpha), inplace)


def elu_(input: Tensor, alpha: float = 1.0) -> Tensor:
    return elu(input, alpha, inplace=True)


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.selu(input), inplace)


def selu_(input: Tensor) -> Tensor:
    return selu(input, inplace=True)


@_composite
def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    _core.refuse_integers("celu", input)
    if alpha == 0:
        raise ValueError("ZeroDivisionError: alpha cannot be 0 for CELU")
    out = kiln.where(input > 0, input, kiln.expm1(input / alpha) * alpha)
    return _maybe_inplace(input, out, inplace)


def celu_(input: Tensor, alpha: float = 1.0) -> Tensor:
    return celu(input, alpha, inplace=True)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.leaky_relu(input, negative_slope), inplace)


def leaky_relu_(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    return leaky_relu(input, negative_slope, inplace=True)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.hardtanh(input, min_val, max_val), inplace)


def hardtanh_(input: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return hardtanh(input, min_val, max_val, inplace=True)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.silu(input), inplace)


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.mish(input), inplace)


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.hardsigmoid(input), inplace)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, _core.hardswish(input), inplace)


def threshold(input: Tensor, threshold: float, value: float, inplace: bool = False) -> Tensor:
    """x where x > threshold, else `value`."""
    _core.refuse_without_kernel("threshold", input)
    out = kiln.where(input > threshold, input, kiln.full_like(input, value))
    return _maybe_inplace(input, out, inplace)


def threshold_(input: Tensor, threshold: float, value: float) -> Tensor:
    return globals()["threshold"](input, threshold, value, inplace=True)


@_composite
def hardshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """x where |x| > lambd, else 0."""
    _core.refuse_integers("hardshrink", input)
    return input.hardshrink(lambd)


@_composite
def softshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """x - lambd above lambd, x + lambd below -lambd, 0 between."""
    _core.refuse_integers("softshrink", input)
    if lambd < 0:
        raise RuntimeError(f"lambda must be greater or equal to 0, but found to be {lambd}.")
    return kiln.where(input > lambd, input - lambd,
                      kiln.where(input < -lambd, input + lambd, kiln.zeros_like(input)))


@_composite
def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """Leaky ReLU with a learned slope: one, or one per channel (dim 1)."""
    return input.prelu(weight)


@_composite
def rrelu(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3,
          training: bool = False, inplace: bool = False) -> Tensor:
    """Randomized leaky ReLU: a slope drawn from U(lower, upper) per element when training,
    their mean otherwise.

    As PyTorch's CPU kernel, training draws one uniform double per element <= 0 (in element
    order; bounds rounded to float below float64 first), so a seed gives PyTorch's slopes."""
    _core.refuse_integers("rrelu", input)
    if training:
        negative = input <= 0
        if input.dtype != kiln.float64:
            lower, upper = float(np.float32(lower)), float(np.float32(upper))
        draws = kiln.empty(int(negative.sum()), dtype=kiln.float64, device=input.device)
        draws = draws.uniform_(lower, upper).to(input.dtype)
        slope = kiln.ones_like(input).masked_scatter(negative, draws)
        out = input * slope
    else:
        out = _core.leaky_relu(input, (lower + upper) / 2)
    return _maybe_inplace(input, out, inplace)


def rrelu_(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3,
           training: bool = False) -> Tensor:
    return rrelu(input, lower, upper, training, inplace=True)


@_composite
def gumbel_softmax(logits: Tensor, tau: float = 1, hard: bool = False, eps: float = 1e-10,
                   dim: int = -1) -> Tensor:
    """Samples from the Gumbel-softmax distribution; `hard` returns one-hot samples whose
    gradient is the soft sample's (straight-through)."""
    gumbels = -kiln.empty_like(logits).exponential_().log()       # Gumbel(0, 1), as torch
    y_soft = kiln.softmax((logits + gumbels) / tau, dim)
    if not hard:
        return y_soft
    index = y_soft.argmax(dim, keepdim=True)
    y_hard = kiln.zeros_like(logits).scatter(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft
