"""The integer arithmetic of kiln's quantized modules, written to give PyTorch's x86 (FBGEMM)
results: choosing an activation's parameters at run time, the integer matrix product, and
turning its int32 accumulators into floats (dynamic) or into quantized outputs (static).

The products are computed as float64 matrix products of the integers minus their zero points:
every product is below 2**16 in magnitude and every partial sum an integer far below 2**53, so
float64 holds each one exactly and the result is the exact int32 accumulator, in any summation
order, at BLAS speed (tests check it against an int64 product).
"""

from __future__ import annotations

import numpy as np

from kiln.ir import dtypes as dt
from kiln.runtime.device import CPU
from kiln.tracer import quantized as _q
from kiln.tracer.errors import op_error
from kiln.tracer.tensor import Tensor

_SMALL_SCALE = np.float32(6.1e-5)       # FBGEMM's smallest activation scale


def check_engine(op: str) -> None:
    """kiln computes as PyTorch's x86/fbgemm engine; another engine's rounding is not matched."""
    from kiln.backends import quantized
    if quantized.engine not in ("x86", "fbgemm"):
        raise op_error(op, f"kiln's quantized kernels reproduce the 'x86'/'fbgemm' engines; "
                       f"kiln.backends.quantized.engine is '{quantized.engine}'",
                       NotImplementedError)


def choose_qparams(low: float, high: float, qmin: int, qmax: int,
                   reduce_range: bool) -> tuple:
    """FBGEMM's (scale, zero_point) for values in [low, high]: the range widened to hold 0,
    the scale rounded to float32, the zero point taken from the end that loses less."""
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    low, high = float(min(np.float32(low), 0.0)), float(max(np.float32(high), 0.0))
    scale = (high - low) / (qmax - qmin)
    if np.float32(scale) == 0 or np.isinf(np.float32(1) / np.float32(scale)):
        scale = 0.1
    if scale < _SMALL_SCALE:         # float32 arithmetic, as FBGEMM's
        grown = _SMALL_SCALE / np.float32(scale)
        scale = float(_SMALL_SCALE)
        if low == 0.0:
            high = float(_SMALL_SCALE * np.float32(qmax - qmin))
        elif high == 0.0:
            low = float(-_SMALL_SCALE * np.float32(qmax - qmin))
        else:
            low, high = float(np.float32(low) * grown), float(np.float32(high) * grown)
    scale = float(np.float32(scale))
    from_low, from_high = qmin - low / scale, qmax - high / scale
    low_error = abs(qmin) - abs(low / scale)
    high_error = abs(qmax) - abs(high / scale)
    start = from_low if low_error < high_error else from_high
    zero_point = qmin if start < qmin else qmax if start > qmax else int(np.rint(start))
    return scale, zero_point


def quantize_activation(x: np.ndarray, reduce_range: bool) -> tuple:
    """A float32 activation quantized to quint8 with parameters from its own min and max
    (dynamic quantization): (integers, scale, zero_point)."""
    if x.size == 0:
        scale, zero_point = choose_qparams(0.0, 0.0, 0, 255, reduce_range)
    else:
        scale, zero_point = choose_qparams(x.min(), x.max(), 0, 255, reduce_range)
    ints = _q._round_per_tensor(x, scale, zero_point, 0, 255, fused=True)
    return ints, scale, zero_point


def weight_columns(w: _q.QuantizedTensor) -> tuple:
    """A qint8 weight (out, in...) as (out, K) float64 integers minus zero points, with the
    per-output-channel float32 scales (a per-tensor weight repeats its one scale)."""
    out_channels = w.shape[0]
    if w._axis is None:
        scales = np.full(out_channels, np.float32(w._scales), np.float32)
        zero = np.int64(w._zero_points)
    elif w._axis == 0:
        scales = w._scales.astype(np.float32)
        zero = w._zero_points.reshape((-1,) + (1,) * (w._int.ndim - 1))
    else:
        raise op_error("quantized weight", f"expected weights quantized per tensor or per "
                       f"output channel (axis 0), got axis {w._axis}", NotImplementedError)
    return (w._int.astype(np.int64) - zero).reshape(out_channels, -1).astype(np.float64), scales


def integer_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact a @ b.T of integer-valued float64 arrays (see the module docstring)."""
    return a @ b.T


def dynamic_output(acc: np.ndarray, act_scale: float, w_scales: np.ndarray,
                   bias: np.ndarray | None) -> np.ndarray:
    """float32 outputs from int32 accumulators, FBGEMM's way: `acc * (act_scale * w_scale) +
    bias` with the float32 multiplier and one rounding of the multiply-add."""
    multiplier = (np.float32(act_scale) * w_scales).astype(np.float64)
    out = acc * multiplier
    if bias is not None:
        out = out + bias.astype(np.float64)
    return out.astype(np.float32)


def linear_dynamic(x: Tensor, w: _q.QuantizedTensor, bias: Tensor | None,
                   reduce_range: bool = True) -> Tensor:
    """torch.ops.quantized.linear_dynamic: quantize x per call, integer product, float out."""
    check_engine("quantized.linear_dynamic")
    if x.dtype is not dt.float32:
        raise op_error("quantized.linear_dynamic", f"expected a float32 input, got {x.dtype}")
    data = x.detach().cpu().numpy()
    if data.shape[-1:] != tuple(w.shape[1:]):
        raise op_error("quantized.linear_dynamic", f"input of shape {tuple(data.shape)} does "
                       f"not match weight of shape {tuple(w.shape)} (in_features "
                       f"{w.shape[1]})")
    ints, scale, zero_point = quantize_activation(data, reduce_range)
    rows = (ints - zero_point).reshape(-1, data.shape[-1]).astype(np.float64)
    cols, w_scales = weight_columns(w)
    acc = integer_matmul(rows, cols)
    b = None if bias is None else bias.detach().cpu().numpy()
    out = dynamic_output(acc, scale, w_scales, b)
    return Tensor._make(out.reshape(data.shape[:-1] + (w.shape[0],)), dt.float32,
                        CPU).to(x.device)
