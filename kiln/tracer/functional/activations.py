"""Activation functions (`relu`, `gelu`, `silu`, `softplus`, ...), built on the elementwise ops."""

from __future__ import annotations

import math

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer.errors import op_error
from kiln.tracer.functional.common import refuse_integers, refuse_without_kernel
from kiln.tracer.functional.elementwise import clamp, sub, tanh
from kiln.tracer.provenance import composite
from kiln.tracer.sparse import SPARSE_TYPES


# ----------------------------------------------------------------------------- activations

def relu(input):
    if type(input) in SPARSE_TYPES:      # F.relu of a sparse tensor: its entries'
        return input.relu()
    return P.relu(input)


@composite
def relu6(input):
    return hardtanh(input, 0.0, 6.0)


@composite
def hardtanh(input, min_val=-1.0, max_val=1.0):
    if input.dtype is dt.bool_:
        raise op_error("hardtanh", "Bool inputs not supported for hardtanh")
    # not clamp: PyTorch passes hardtanh's gradient strictly inside (min, max) and clamp's
    # on the closed interval; NaN falls through both comparisons and propagates
    return P.where(P.le(input, min_val), min_val,
                   P.where(P.ge(input, max_val), max_val, input))


@composite
def leaky_relu(input, negative_slope=0.01):
    refuse_integers("leaky_relu", input)
    return P.where(P.gt(input, 0), input, input * negative_slope)


@composite
def elu(input, alpha=1.0):
    refuse_integers("elu", input)
    return P.where(P.gt(input, 0), input, P.expm1(input) * alpha)


@composite
def selu(input):
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return elu(input, alpha) * scale


# Below this, each gate that _times_gate multiplies by (Phi(x), sigmoid(x), tanh(softplus(x)),
# hardsigmoid(x)) is exactly 0 in every float dtype; and it is finite even in float16
_GATE_FLOOR = -6e4


def _times_gate(x, gate):
    """x * gate(x), for a gate that goes to 0 as x goes to -inf (gelu, silu, mish, hardswish):
    at x = -inf the result is the limit, -0, where x * gate would be -inf * 0 = NaN. x is
    raised to the floor first (a where, whose gradient is one op; NaN stays NaN through the
    gate)."""
    return P.where(P.gt(x, _GATE_FLOOR), x, _GATE_FLOOR) * gate


@composite
def gelu(input, approximate="none"):
    refuse_integers("gelu", input)
    if approximate == "tanh":
        inner = (input + input * input * input * 0.044715) * math.sqrt(2 / math.pi)
        return _times_gate(input, (P.tanh(inner) + 1) * 0.5)
    if approximate != "none":
        raise op_error("gelu", f"approximate argument must be either none or tanh, got "
                       f"{approximate!r}", ValueError)
    return _times_gate(input, (P.erf(input * (1 / math.sqrt(2))) + 1) * 0.5)


@composite
def silu(input):
    refuse_integers("silu", input)
    if input.dtype.is_complex:          # no -inf to guard: x / (1 + exp(-x)) as PyTorch
        return input / (P.exp(-input) + 1)
    return _times_gate(input, P.sigmoid(input))


@composite
def mish(input):
    refuse_integers("mish", input)
    return _times_gate(input, tanh(softplus(input)))


@composite
def softplus(input, beta=1.0, threshold=20.0):
    refuse_integers("softplus", input)
    scaled = input * beta if beta != 1 else input
    soft = P.log1p(P.exp(scaled)) / beta if beta != 1 else P.log1p(P.exp(scaled))
    return P.where(P.gt(scaled, threshold), input, soft)


@composite
def logsigmoid(input):
    refuse_integers("logsigmoid", input)
    return -softplus(-input)


@composite
def hardsigmoid(input):
    refuse_integers("hardsigmoid", input)
    return clamp(input / 6 + 0.5, 0.0, 1.0)


@composite
def hardswish(input):
    refuse_integers("hardswish", input)
    return _times_gate(input, hardsigmoid(input))


@composite
def softsign(input):
    refuse_without_kernel("abs", input)          # PyTorch has no bool abs
    return input / (P.abs(input) + 1)


@composite
def tanhshrink(input):
    return sub(input, tanh(input))       # an int input gives float; bool - float is refused
