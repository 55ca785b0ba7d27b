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
    _q.on_cpu("quantized.linear_dynamic", x)
    data = x.detach().numpy()
    if data.shape[-1:] != tuple(w.shape[1:]):
        raise op_error("quantized.linear_dynamic", f"input of shape {tuple(data.shape)} does "
                       f"not match weight of shape {tuple(w.shape)} (in_features "
                       f"{w.shape[1]})")
    b = None if bias is None else bias.detach().cpu().numpy()
    out = linear_dynamic_array(data, w, b, reduce_range)
    return Tensor._make(out, dt.float32, CPU)


def linear_dynamic_array(x: np.ndarray, w: _q.QuantizedTensor, bias: np.ndarray | None,
                         reduce_range: bool) -> np.ndarray:
    """linear_dynamic on a float32 NumPy array (one set of activation parameters for all of
    x), a float32 array out."""
    ints, scale, zero_point = quantize_activation(x, reduce_range)
    rows = (ints - zero_point).reshape(-1, x.shape[-1]).astype(np.float64)
    cols, w_scales = weight_columns(w)
    out = dynamic_output(integer_matmul(rows, cols), scale, w_scales, bias)
    return out.reshape(x.shape[:-1] + (w.shape[0],))


def lstm_layer_dynamic(x: np.ndarray, weights: tuple, h: np.ndarray, c: np.ndarray,
                       reverse: bool) -> tuple:
    """One direction of one layer of torch.quantized_lstm (dynamic): the input projection of
    the whole (T, B, I) sequence at once (one set of activation parameters), then per step
    `gates = linear_dynamic(h) + projected[t]`, the gates in float32 (sigmoid and tanh
    computed in float64 and rounded). Returns (outputs (T, B, H), h, c)."""
    w_ih, b_ih, w_hh, b_hh = weights
    projected = linear_dynamic_array(x, w_ih, b_ih, reduce_range=True)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outputs = np.empty(x.shape[:2] + (h.shape[-1],), np.float32)
    for t in steps:
        gates = linear_dynamic_array(h, w_hh, b_hh, reduce_range=True) + projected[t]
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * _tanh(g)
        h = _sigmoid(o) * _tanh(c)
        outputs[t] = h
    return outputs, h, c


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x.astype(np.float64)).astype(np.float32)


# ---------------------------------------------------------------------- static (quantized out)
def requantize(acc: np.ndarray, act_scale: float, w_scales: np.ndarray, bias, out_scale: float,
               out_zero_point: int, relu: bool, channel_axis: int) -> np.ndarray:
    """quint8 outputs from int32 accumulators, FBGEMM's ReQuantizeOutput with a float bias:
    `round((acc + bias / (sx * sw)) * (sx * sw / s_out)) + zp_out`, each step in float32,
    clamped to [0, 255] (to [zp_out, 255] with a fused ReLU)."""
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    act_times_w = (np.float32(act_scale) * w_scales).astype(np.float32).reshape(shape)
    multiplier = (act_times_w / np.float32(out_scale)).astype(np.float32)
    raw = acc.astype(np.float32)
    if bias is not None:
        raw = raw + (bias.astype(np.float32).reshape(shape) / act_times_w)
    low = out_zero_point if relu else 0
    return np.clip(np.rint(raw * multiplier) + out_zero_point, low, 255).astype(np.int64)


def _activation(op: str, x) -> _q.QuantizedTensor:
    if not isinstance(x, _q.QuantizedTensor) or x.dtype is not dt.quint8 or x._axis is not None:
        got = f"a {x.dtype.name} tensor" if isinstance(x, Tensor) else type(x).__name__
        if isinstance(x, _q.QuantizedTensor):
            got += f" quantized {x.qscheme().name}"
        raise op_error(op, f"expected a quint8 per-tensor quantized input (put a QuantStub "
                       f"before it), got {got}", TypeError)
    return x


def linear(x, w: _q.QuantizedTensor, bias, out_scale: float, out_zero_point: int,
           relu: bool = False) -> _q.QuantizedTensor:
    """torch.ops.quantized.linear (and linear_relu): quint8 in, quint8 out."""
    op = "quantized.linear"
    check_engine(op)
    x = _activation(op, x)
    if x.shape[-1] != w.shape[1]:
        raise op_error(op, f"input of shape {tuple(x.shape)} does not match weight of shape "
                       f"{tuple(w.shape)} (in_features {w.shape[1]})")
    rows = (x._int.astype(np.int64) - x._zero_points).reshape(-1, w.shape[1])
    cols, w_scales = weight_columns(w)
    acc = integer_matmul(rows.astype(np.float64), cols)
    b = None if bias is None else bias.detach().cpu().numpy()
    ints = requantize(acc, x._scales, w_scales, b, out_scale, out_zero_point, relu, 1)
    return _q.make(ints.reshape(tuple(x.shape[:-1]) + (w.shape[0],)), dt.quint8,
                   float(out_scale), int(out_zero_point))


def conv2d(x, w: _q.QuantizedTensor, bias, stride: tuple, padding: tuple, dilation: tuple,
           groups: int, out_scale: float, out_zero_point: int,
           relu: bool = False) -> _q.QuantizedTensor:
    """torch.ops.quantized.conv2d (and conv2d_relu) on NCHW quint8 input, zero padding."""
    op = "quantized.conv2d"
    check_engine(op)
    x = _activation(op, x)
    if x.ndim != 4 or x.shape[1] != w.shape[1] * groups:
        raise op_error(op, f"expected input (N, {w.shape[1] * groups}, H, W) for weight of "
                       f"shape {tuple(w.shape)} with groups={groups}, got {tuple(x.shape)}")
    shifted = (x._int.astype(np.int64) - x._zero_points).astype(np.float64)
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    shifted = np.pad(shifted, ((0, 0), (0, 0), (ph, ph), (pw, pw)))   # zero = the zero point
    kh, kw = w.shape[2], w.shape[3]
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    windows = np.lib.stride_tricks.sliding_window_view(shifted, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]             # N, C, Ho, Wo, kh, kw
    n, _, out_h, out_w = windows.shape[:4]
    cols, w_scales = weight_columns(w)                          # O, C/groups * kh * kw
    per_group = w.shape[0] // groups
    acc = np.empty((n, out_h, out_w, w.shape[0]))
    for g in range(groups):
        part = windows[:, g * w.shape[1]:(g + 1) * w.shape[1]]
        rows = part.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, -1)
        block = integer_matmul(rows, cols[g * per_group:(g + 1) * per_group])
        acc[..., g * per_group:(g + 1) * per_group] = block.reshape(n, out_h, out_w, -1)
    acc = acc.transpose(0, 3, 1, 2)
    b = None if bias is None else bias.detach().cpu().numpy()
    ints = requantize(acc, x._scales, w_scales, b, out_scale, out_zero_point, relu, 1)
    return _q.make(np.ascontiguousarray(ints), dt.quint8, float(out_scale), int(out_zero_point))


def _dequantized(x: _q.QuantizedTensor) -> np.ndarray:
    """x's float32 values as the x86 kernels form them: one multiply-add
    `scale * q + (-zero_point * scale)`."""
    scale = np.float32(x._scales)
    offset = np.float32(-x._zero_points * scale)
    return (x._int.astype(np.float64) * np.float64(scale) + np.float64(offset)).astype(np.float32)


def add(x, y, out_scale: float, out_zero_point: int, relu: bool = False) -> _q.QuantizedTensor:
    """torch.ops.quantized.add (add_relu): both dequantized, added in float32, quantized to
    the output's parameters."""
    op = "quantized.add"
    check_engine(op)
    x, y = _activation(op, x), _activation(op, y)
    total = _dequantized(x) + _dequantized(y)
    if relu:
        total = np.maximum(total, np.float32(0))
    return _requantized(total, out_scale, out_zero_point)


def mul(x, y, out_scale: float, out_zero_point: int) -> _q.QuantizedTensor:
    """torch.ops.quantized.mul: the float32 product of the dequantized inputs, quantized."""
    op = "quantized.mul"
    check_engine(op)
    x, y = _activation(op, x), _activation(op, y)
    return _requantized(_dequantized(x) * _dequantized(y), out_scale, out_zero_point)


def cat(xs, dim: int, out_scale: float, out_zero_point: int) -> _q.QuantizedTensor:
    """torch.ops.quantized.cat: every input dequantized, joined, quantized to one scale."""
    op = "quantized.cat"
    check_engine(op)
    parts = [_dequantized(_activation(op, x)) for x in xs]
    return _requantized(np.concatenate(parts, axis=dim), out_scale, out_zero_point)


def _requantized(values: np.ndarray, scale: float, zero_point: int) -> _q.QuantizedTensor:
    ints = _q._round_per_tensor(values, scale, zero_point, 0, 255, fused=True)
    return _q.make(ints, dt.quint8, float(scale), int(zero_point))
