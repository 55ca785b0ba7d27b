"""Observers (torch.ao.quantization.observer): modules that watch the float values passing
through a point of a model and turn what they saw into a scale and zero point.

The arithmetic is float32 tensor arithmetic in the order PyTorch's observers use, so
`calculate_qparams()` equals torch's bit for bit (tests/quantization/test_observer.py).
`with_args` makes a factory with fixed constructor arguments, as QConfig needs (a factory per
layer, never one shared instance).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

import kiln
from kiln import nn
from kiln.tracer import quantized as _q

EPS32 = float(2.0 ** -23)         # torch.finfo(torch.float32).eps

__all__ = ["ObserverBase", "UniformQuantizationObserverBase", "MinMaxObserver",
           "MovingAverageMinMaxObserver", "PerChannelMinMaxObserver",
           "MovingAveragePerChannelMinMaxObserver", "HistogramObserver", "PlaceholderObserver",
           "NoopObserver", "default_observer", "default_weight_observer",
           "default_per_channel_weight_observer", "default_dynamic_quant_observer",
           "default_placeholder_observer", "default_histogram_observer",
           "weight_observer_range_neg_127_to_127",
           "per_channel_weight_observer_range_neg_127_to_127", "default_float_qparams_observer"]


class _Factory:
    """`Observer.with_args(...)`: calling it makes a fresh observer with those arguments (a
    later call's keywords win); `with_args` on it adds more."""

    def __init__(self, make: functools.partial):
        self.p = make

    def __call__(self, *args, **kwargs):
        return self.p(*args, **kwargs)

    def with_args(self, **kwargs) -> "_Factory":
        return _Factory(functools.partial(self.p, **kwargs))

    def __repr__(self) -> str:
        return repr(self.p)


def _with_args(cls_or_factory, **kwargs) -> _Factory:
    return _Factory(functools.partial(cls_or_factory, **kwargs))


class ObserverBase(nn.Module):
    """An observer: forward(x) records statistics and returns x unchanged."""

    with_args = classmethod(_with_args)

    def __init__(self, dtype, is_dynamic: bool = False):
        super().__init__()
        self.dtype = dtype
        self.is_dynamic = is_dynamic

    def calculate_qparams(self):
        raise NotImplementedError(f"{type(self).__name__} computes no quantization parameters")


def qmin_qmax(dtype, quant_min, quant_max, reduce_range: bool) -> tuple:
    """The integer range an observer quantizes into: the user's (halved with reduce_range), or
    the dtype's 8-bit default (one bit less with reduce_range)."""
    if quant_min is not None and quant_max is not None:
        if not quant_min <= 0 <= quant_max:
            raise AssertionError("Used-specified quantization range must include 0.")
        if quant_min >= quant_max:
            raise AssertionError("qmin must be strictly less than qmax for user-specified "
                                 "quantization range.")
        if dtype in (kiln.qint8, kiln.int8) and quant_max - quant_min + 1 > 256:
            raise AssertionError("quantization range should be positive and not exceed the "
                                 "maximum bit range (=256).")
        return (quant_min // 2, quant_max // 2) if reduce_range else (quant_min, quant_max)
    if dtype in (kiln.qint8, kiln.int8):
        return (-64, 63) if reduce_range else (-128, 127)
    if dtype in (kiln.quint8, kiln.uint8):
        return (0, 127) if reduce_range else (0, 255)
    if dtype in (kiln.qint32, kiln.int32):
        return -2 ** 31, 2 ** 31 - 1
    raise NotImplementedError(f"kiln's observers quantize to quint8, qint8 or qint32, got "
                              f"{dtype}")


class UniformQuantizationObserverBase(ObserverBase):
    """What the min/max observers share: the qscheme, the integer range and the qparams rule."""

    def __init__(self, dtype=kiln.quint8, qscheme=_q.per_tensor_affine, reduce_range=False,
                 quant_min=None, quant_max=None, factory_kwargs=None, eps=EPS32,
                 is_dynamic=False, **kwargs):
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected arguments {sorted(kwargs)}")
        if qscheme not in _q._QSCHEMES.values():
            raise AssertionError(f"{type(self).__name__}: unknown qscheme {qscheme}")
        if dtype not in (kiln.qint8, kiln.quint8, kiln.qint32, kiln.int8, kiln.uint8,
                         kiln.int32):
            raise AssertionError(f"{type(self).__name__}: dtype {dtype} is not supported "
                                 "(quint8, qint8, qint32)")
        self.qscheme = qscheme
        self.reduce_range = reduce_range
        self.register_buffer("eps", kiln.tensor([eps]))
        self.has_customized_qrange = quant_min is not None and quant_max is not None
        self.quant_min, self.quant_max = qmin_qmax(dtype, quant_min, quant_max, reduce_range)
        if qscheme in (_q.per_tensor_symmetric, _q.per_channel_symmetric) and reduce_range \
                and dtype is kiln.quint8:
            raise NotImplementedError("Cannot reduce range for symmetric quantization for "
                                      "quint8")

    def _calculate_qparams(self, min_val, max_val) -> tuple:
        """(scale float32, zero_point), shape (1,) per tensor or (channels,); the zero point is
        int32 for affine schemes and int64 for symmetric ones, as PyTorch's."""
        if not _seen_values(min_val, max_val):
            return kiln.tensor([1.0]), kiln.tensor([0])
        lo, hi = self.quant_min, self.quant_max
        min_neg = kiln.minimum(min_val, kiln.zeros_like(min_val))
        max_pos = kiln.maximum(max_val, kiln.zeros_like(max_val))
        if self.qscheme in (_q.per_tensor_symmetric, _q.per_channel_symmetric):
            max_pos = kiln.maximum(-min_neg, max_pos)
            scale = kiln.maximum(max_pos / (float(hi - lo) / 2), self.eps)
            middle = 128 if not self.has_customized_qrange else (lo + hi) // 2
            zero = middle if self.dtype in (kiln.quint8, kiln.uint8) else 0
            zero_point = kiln.full(tuple(min_neg.shape), zero, dtype=kiln.int64)
        elif self.qscheme is _q.per_channel_affine_float_qparams:
            scale = (max_val - min_val) / float(hi - lo)
            scale = kiln.where(scale > self.eps, scale, kiln.ones_like(scale))
            zero_point = -1 * min_val / scale
        else:
            scale = kiln.maximum((max_pos - min_neg) / float(hi - lo), self.eps)
            zero_point = lo - kiln.round(min_neg / scale).to(kiln.int32)
            zero_point = kiln.clamp(zero_point, lo, hi)      # int32, as PyTorch's
        if scale.ndim == 0:
            scale = scale.reshape(1)
        if zero_point.ndim == 0:
            zero_point = zero_point.reshape(1)
        return scale, zero_point

    def reset_min_max_vals(self):
        raise NotImplementedError("Cannot reset min/max values in the given observer.")


def _seen_values(min_val, max_val) -> bool:
    """False (with PyTorch's warning) before any forward; min > max is an error."""
    if min_val.numel() == 0 or max_val.numel() == 0 or (
            min_val.ndim == 0 and math.isinf(min_val.item()) and min_val.item() > 0
            and math.isinf(max_val.item()) and max_val.item() < 0):
        warnings.warn("must run observer before calling calculate_qparams. Returning default "
                      "values.", stacklevel=3)
        return False
    if bool((min_val > max_val).any()):
        raise AssertionError(f"min {min_val} should be less than max {max_val}")
    return True


class MinMaxObserver(UniformQuantizationObserverBase):
    """Quantization parameters from the running minimum and maximum of everything seen."""

    def __init__(self, dtype=kiln.quint8, qscheme=_q.per_tensor_affine, reduce_range=False,
                 quant_min=None, quant_max=None, factory_kwargs=None, eps=EPS32,
                 is_dynamic=False, **kwargs):
        if qscheme not in (_q.per_tensor_affine, _q.per_tensor_symmetric):
            raise NotImplementedError(f"{type(self).__name__}'s qscheme only supports "
                                      f"per_tensor_symmetric and per_tensor_affine, got {qscheme}")
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs,
                         eps, is_dynamic, **kwargs)
        self.register_buffer("min_val", kiln.tensor(float("inf")))
        self.register_buffer("max_val", kiln.tensor(float("-inf")))

    def forward(self, x_orig):
        if x_orig.numel() == 0:
            return x_orig
        low, high = kiln.aminmax(x_orig.detach().to(self.min_val.dtype))
        self._store(self._combine(low, high))
        return x_orig

    def _combine(self, low, high) -> tuple:
        return kiln.minimum(low, self.min_val), kiln.maximum(high, self.max_val)

    def _store(self, bounds: tuple) -> None:
        with kiln.no_grad():
            self.min_val.copy_(bounds[0])
            self.max_val.copy_(bounds[1])

    def calculate_qparams(self):
        return self._calculate_qparams(self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self):
        self._store((kiln.tensor(float("inf")), kiln.tensor(float("-inf"))))


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Like MinMaxObserver with `min += c * (batch_min - min)` (and max) after the first batch."""

    def __init__(self, averaging_constant=0.01, dtype=kiln.quint8,
                 qscheme=_q.per_tensor_affine, reduce_range=False, quant_min=None,
                 quant_max=None, eps=EPS32, is_dynamic=False, **kwargs):
        if is_dynamic and averaging_constant != 1:
            raise NotImplementedError("MovingAverageMinMaxObserver doesn't support dynamic "
                                      f"quantization for averaging constant of "
                                      f"{averaging_constant}")
        self.averaging_constant = averaging_constant
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, None, eps,
                         is_dynamic, **kwargs)

    def _combine(self, low, high) -> tuple:
        if math.isinf(self.min_val.item()) and math.isinf(self.max_val.item()):
            return low, high
        c = self.averaging_constant
        return (self.min_val + c * (low - self.min_val), self.max_val + c * (high - self.max_val))


class PerChannelMinMaxObserver(UniformQuantizationObserverBase):
    """Running minimum and maximum per slice along `ch_axis`: per-channel parameters."""

    def __init__(self, ch_axis=0, dtype=kiln.quint8, qscheme=_q.per_channel_affine,
                 reduce_range=False, quant_min=None, quant_max=None, factory_kwargs=None,
                 eps=EPS32, is_dynamic=False, **kwargs):
        if qscheme not in (_q.per_channel_affine, _q.per_channel_symmetric,
                           _q.per_channel_affine_float_qparams):
            raise NotImplementedError(f"{type(self).__name__}'s qscheme only supports "
                                      "per_channel_symmetric, per_channel_affine and "
                                      f"per_channel_affine_float_qparams, got {qscheme}")
        if is_dynamic:
            raise NotImplementedError(f"{type(self).__name__} doesn't support dynamic "
                                      "quantization")
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs,
                         eps, is_dynamic, **kwargs)
        self.ch_axis = ch_axis
        self.register_buffer("min_val", kiln.tensor([]))
        self.register_buffer("max_val", kiln.tensor([]))

    def forward(self, x_orig):
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype)
        rows = kiln.flatten(x.movedim(self.ch_axis, 0), start_dim=1)
        low, high = kiln.aminmax(rows, dim=1)
        if self.min_val.numel() and self.max_val.numel():
            low, high = self._combine(low, high)
        self.min_val = low.clone()
        self.max_val = high.clone()
        return x_orig

    def _combine(self, low, high) -> tuple:
        return kiln.minimum(low, self.min_val), kiln.maximum(high, self.max_val)

    def calculate_qparams(self):
        return self._calculate_qparams(self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self):
        self.min_val = kiln.tensor([])
        self.max_val = kiln.tensor([])

    def _load_from_state_dict(self, state_dict: dict, prefix: str, missing: list,
                              errors: list, assign: bool) -> None:
        # a fresh observer's statistics are empty: they take the checkpoint's channel count
        # (PyTorch's observer resizes them so)
        for name in ("min_val", "max_val"):
            value = state_dict.get(prefix + name)
            if isinstance(value, kiln.Tensor) and tuple(value.shape) != \
                    tuple(getattr(self, name).shape):
                setattr(self, name, kiln.zeros(tuple(value.shape), dtype=value.dtype))
        super()._load_from_state_dict(state_dict, prefix, missing, errors, assign)


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """PerChannelMinMaxObserver with moving averages of each channel's min and max."""

    def __init__(self, averaging_constant=0.01, ch_axis=0, dtype=kiln.quint8,
                 qscheme=_q.per_channel_affine, reduce_range=False, quant_min=None,
                 quant_max=None, eps=EPS32, is_dynamic=False, **kwargs):
        super().__init__(ch_axis, dtype, qscheme, reduce_range, quant_min, quant_max, None, eps,
                         is_dynamic, **kwargs)
        self.averaging_constant = averaging_constant

    def _combine(self, low, high) -> tuple:
        c = self.averaging_constant
        return (self.min_val + c * (low - self.min_val), self.max_val + c * (high - self.max_val))


class PlaceholderObserver(ObserverBase):
    """Observes nothing: it carries the dtype (and for dynamic quantization the range) that
    `convert` / `quantize_dynamic` read."""

    def __init__(self, dtype=kiln.float32, custom_op_name="", compute_dtype=None,
                 quant_min=None, quant_max=None, qscheme=None, eps=None, is_dynamic=False):
        super().__init__(dtype=dtype, is_dynamic=is_dynamic or bool(compute_dtype))
        self.qscheme = _q.per_tensor_affine if qscheme is None else qscheme
        self.quant_min, self.quant_max = quant_min, quant_max
        self.eps = EPS32 if eps is None else eps
        self.custom_op = custom_op_name

    def forward(self, x):
        return x

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, is_dynamic={self.is_dynamic}"

    def calculate_qparams(self):
        raise Exception("calculate_qparams should not be called for PlaceholderObserver")


class NoopObserver(PlaceholderObserver):
    """Observes nothing and computes nothing (torch's NoopObserver)."""


class HistogramObserver(UniformQuantizationObserverBase):
    """A histogram of everything seen (`bins` bins over the running min..max; a wider batch
    re-bins the old counts, each split into 16 and moved by its midpoint), and at
    calculate_qparams the sub-range that minimizes the squared quantization error, searched
    as PyTorch searches it. The float32 arithmetic follows torch's kernels (histc's bin rule,
    linspace's fused steps, bincount's in-order float32 sums, comparisons against float32
    thresholds); the two float32 totals (a histogram's sum, an error's sum over bins) are
    summed in float64 and rounded, where torch sums in its own order: they can differ in the
    last bit, which changes the result only if two candidate ranges' errors tie to that bit."""

    def __init__(self, bins: int = 2048, dtype=kiln.quint8, qscheme=_q.per_tensor_affine,
                 reduce_range=False, quant_min=None, quant_max=None, factory_kwargs=None,
                 eps=EPS32, is_dynamic=False, **kwargs):
        if qscheme not in (_q.per_tensor_affine, _q.per_tensor_symmetric):
            raise NotImplementedError("HistogramObserver's qscheme only supports "
                                      "per_tensor_symmetric and per_tensor_affine")
        if is_dynamic:
            raise NotImplementedError("HistogramObserver doesn't support dynamic quantization")
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs,
                         eps, is_dynamic, **kwargs)
        self.bins = bins
        self.register_buffer("histogram", kiln.zeros(bins))
        self.register_buffer("min_val", kiln.tensor(float("inf")))
        self.register_buffer("max_val", kiln.tensor(float("-inf")))
        self.dst_nbins = 2 ** (8 * self.dtype.itemsize)
        self.upsample_rate = 16

    def forward(self, x_orig):
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().cpu().numpy().astype(np.float32, copy=False).reshape(-1)
        if np.isinf(x).any():
            warnings.warn("torch.inf detected in input tensor, ignoring input", stacklevel=2)
            x = x[~np.isinf(x)]
            if x.size == 0:
                return x_orig
        low, high = np.float32(x.min()), np.float32(x.max())
        old_low, old_high = np.float32(self.min_val.item()), np.float32(self.max_val.item())
        if np.isinf(old_low) or np.isinf(old_high):
            self._store(_histc(x, self.bins, low, high), low, high)
            return x_orig
        new_low, new_high = min(old_low, low), max(old_high, high)
        update = _histc(x, self.bins, new_low, new_high)
        old = self.histogram.numpy()
        if new_low == old_low and new_high == old_high:
            self._store(old + update, new_low, new_high)
        elif old_low == old_high:
            spread = _histc(np.array([old_low], np.float32), self.bins, new_low, new_high)
            self._store(spread * np.float32(old.sum(dtype=np.float64)) + update, new_low,
                        new_high)
        else:
            moved = self._upscale(old, old_low, old_high, new_low, new_high)
            self._store(update + moved, new_low, new_high)
        return x_orig

    def _store(self, histogram: np.ndarray, low, high) -> None:
        self.histogram = kiln.tensor(histogram.astype(np.float32))
        self.min_val = kiln.tensor(np.float32(low))
        self.max_val = kiln.tensor(np.float32(high))

    def _upscale(self, histogram, old_low, old_high, new_low, new_high) -> np.ndarray:
        """The old counts re-binned onto [new_low, new_high]: each bin split into
        `upsample_rate` equal parts, each part moved to the new bin holding its midpoint."""
        fine = self.bins * self.upsample_rate
        parts = np.repeat(histogram, self.upsample_rate) / np.float32(self.upsample_rate)
        size = np.float32((old_high - old_low) / np.float32(fine))
        mids = (_linspace(old_low, old_high, fine + 1)[:-1] + np.float32(0.5) * size)
        edges = _linspace(new_low, new_high, self.bins + 1)
        where = np.clip(np.searchsorted(edges, mids.astype(np.float32), side="right") - 1, 0,
                        self.bins - 1)
        out = np.zeros(self.bins, np.float32)
        np.add.at(out, where, parts.astype(np.float32))        # in order, in float32
        return out

    def _quantization_error(self, start: int, end: int) -> float:
        """The squared error of quantizing the histogram into `dst_nbins` bins over bins
        start..end (torch's _compute_quantization_error, in its float32 steps)."""
        f = np.float32
        bin_width = (self.max_val.item() - self.min_val.item()) / self.bins
        dst_width = bin_width * (end - start + 1) / self.dst_nbins
        if dst_width == 0.0:
            return 0.0
        w, half = f(dst_width), f(dst_width / 2)
        begin = (np.arange(self.bins) - start).astype(f) * f(bin_width)
        finish = begin + f(bin_width)
        first = np.clip(np.floor_divide(begin, w), f(0), f(self.dst_nbins - 1))
        first_center = (first + f(0.5)) * w
        last = np.clip(np.floor_divide(finish, w), f(0), f(self.dst_nbins - 1))
        density = self.histogram.numpy() / f(bin_width)
        norm = np.zeros(self.bins, f)
        norm += _norm(begin - first_center, np.ones(self.bins, f) * half, density)
        norm += (last - first - f(1)) * _norm(f(-dst_width / 2), half, density)
        last_center = last * w + half
        norm += _norm(f(-dst_width / 2), finish - last_center, density)
        return float(f(norm.sum(dtype=np.float64)))

    def _search(self) -> tuple:
        """The (min, max) that torch's non-linear parameter search settles on."""
        histogram = self.histogram.numpy()
        total = float(np.float32(histogram.sum(dtype=np.float64)))
        cumulative = np.cumsum(histogram, dtype=np.float64).astype(np.float32)
        step, alpha, beta = 1e-5, 0.0, 1.0
        start, end = 0, self.bins - 1
        best = float("inf")
        while alpha < beta:
            next_alpha, next_beta = alpha + step, beta - step
            left, right = start, end
            while left < end and cumulative[left] < np.float32(next_alpha * total):
                left += 1
            while right > start and cumulative[right] > np.float32(next_beta * total):
                right -= 1
            next_start, next_end = start, end
            if left - start > end - right:
                next_start, alpha = left, next_alpha
            else:
                next_end, beta = right, next_beta
            if next_start == start and next_end == end:
                continue
            norm = self._quantization_error(next_start, next_end)
            if norm > best:
                break
            best, start, end = norm, next_start, next_end
        width = (self.max_val - self.min_val) / self.bins
        return self.min_val + width * start, self.min_val + width * (end + 1)

    def calculate_qparams(self):
        if math.isinf(self.min_val.item()) and math.isinf(self.max_val.item()):
            warnings.warn("must run observer before calling calculate_qparams. Returning "
                          "default scale and zero point ", stacklevel=2)
            return kiln.tensor([1.0]), kiln.tensor([0])
        return self._calculate_qparams(*self._search())

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"


def _histc(x: np.ndarray, bins: int, low, high) -> np.ndarray:
    """torch.histc in float32: bin floor((x - low) * bins / (high - low)), the top edge in the
    last bin, values outside [low, high] dropped; equal bounds widen by 1 each way."""
    low, high = np.float32(low), np.float32(high)
    if low == high:
        low, high = low - np.float32(1), high + np.float32(1)
    x = x[(x >= low) & (x <= high)]
    where = np.floor((x - low) * np.float32(bins) / (high - low)).astype(np.int64)
    where[where == bins] = bins - 1
    return np.bincount(where, minlength=bins).astype(np.float32)


def _linspace(low, high, steps: int) -> np.ndarray:
    """torch.linspace in float32: a float32 step, the first half counted up from `low` and
    the rest down from `high`, each value one fused multiply-add."""
    low, high = np.float32(low), np.float32(high)
    step = np.float32((high - low) / np.float32(steps - 1))
    i = np.arange(steps)
    up = (np.float64(low) + np.float64(step) * i).astype(np.float32)
    down = (np.float64(high) - np.float64(step) * (steps - 1 - i)).astype(np.float32)
    return np.where(i < steps // 2, up, down)


def _norm(delta_begin, delta_end, density) -> np.ndarray:
    """density * (end**3 - begin**3) / 3, in float32 as torch's _get_norm."""
    f = np.float32
    cubes = (f(delta_end) * delta_end * delta_end - f(delta_begin) * delta_begin *
             delta_begin)
    return density * (cubes / f(3))


default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
default_placeholder_observer = PlaceholderObserver
default_weight_observer = MinMaxObserver.with_args(dtype=kiln.qint8,
                                                   qscheme=_q.per_tensor_symmetric)
weight_observer_range_neg_127_to_127 = MinMaxObserver.with_args(
    dtype=kiln.qint8, qscheme=_q.per_tensor_symmetric, quant_min=-127, quant_max=127,
    eps=2 ** -12)
default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
default_per_channel_weight_observer = PerChannelMinMaxObserver.with_args(
    dtype=kiln.qint8, qscheme=_q.per_channel_symmetric)
per_channel_weight_observer_range_neg_127_to_127 = PerChannelMinMaxObserver.with_args(
    dtype=kiln.qint8, qscheme=_q.per_channel_symmetric, quant_min=-127, quant_max=127,
    eps=2 ** -12)
default_dynamic_quant_observer = PlaceholderObserver.with_args(
    dtype=kiln.quint8, quant_min=0, quant_max=255, is_dynamic=True)
default_float_qparams_observer = PerChannelMinMaxObserver.with_args(
    dtype=kiln.quint8, qscheme=_q.per_channel_affine_float_qparams, ch_axis=0)
