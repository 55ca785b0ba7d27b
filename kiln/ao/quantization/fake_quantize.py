"""Fake-quantize modules (torch.ao.quantization.fake_quantize): an observer's scale and zero
point, kept as buffers, applied by quantizing and dequantizing in float32 in forward, with the
straight-through gradient; the building block of quantization-aware training.

`FakeQuantize` follows PyTorch's module: buffers `fake_quant_enabled` and `observer_enabled`
(uint8 flags), `scale` and `zero_point` (resized to a per-channel observer's shape), the
observer as `activation_post_process`, and the `enable_*` / `disable_*` switches, also as
functions for `model.apply(...)`.
"""

from __future__ import annotations

import kiln
from kiln import nn
from kiln.ao.quantization.observer import MovingAverageMinMaxObserver, _with_args
from kiln.tracer import quantized as _q

__all__ = ["FakeQuantizeBase", "FakeQuantize", "default_fake_quant",
           "default_weight_fake_quant", "default_per_channel_weight_fake_quant",
           "disable_fake_quant", "enable_fake_quant", "disable_observer", "enable_observer"]

_PER_CHANNEL = (_q.per_channel_affine, _q.per_channel_symmetric,
                _q.per_channel_affine_float_qparams)


class FakeQuantizeBase(nn.Module):
    """The switches every fake-quantize module has: fake quantization and observation, each a
    one-element uint8 buffer (so they travel in the state_dict)."""

    with_args = classmethod(_with_args)

    def __init__(self):
        super().__init__()
        self.register_buffer("fake_quant_enabled", kiln.tensor([1], dtype=kiln.uint8))
        self.register_buffer("observer_enabled", kiln.tensor([1], dtype=kiln.uint8))

    def calculate_qparams(self, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} computes no quantization parameters")

    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.fake_quant_enabled[0] = 1 if enabled else 0

    def disable_fake_quant(self) -> None:
        self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True) -> None:
        self.observer_enabled[0] = 1 if enabled else 0

    def disable_observer(self) -> None:
        self.enable_observer(False)


class FakeQuantize(FakeQuantizeBase):
    """Observe x (while observer_enabled), then fake-quantize it with the observer's scale and
    zero point (while fake_quant_enabled): per tensor, or per channel along the observer's
    ch_axis."""

    def __init__(self, observer=MovingAverageMinMaxObserver, quant_min=None, quant_max=None,
                 is_dynamic=False, **observer_kwargs):
        super().__init__()
        if quant_min is not None and quant_max is not None:
            if quant_min > quant_max:
                raise AssertionError("quant_min must be less than or equal to quant_max")
            observer_kwargs.update(quant_min=quant_min, quant_max=quant_max)
        observer_kwargs["is_dynamic"] = is_dynamic
        self.activation_post_process = observer(**observer_kwargs)
        self.quant_min = self.activation_post_process.quant_min
        self.quant_max = self.activation_post_process.quant_max
        self.is_dynamic = self.activation_post_process.is_dynamic
        self.qscheme = self.activation_post_process.qscheme
        self.dtype = self.activation_post_process.dtype
        float_zero = self.qscheme is _q.per_channel_affine_float_qparams
        self.register_buffer("scale", kiln.tensor([1.0], dtype=kiln.float32))
        self.register_buffer("zero_point", kiln.tensor(
            [0], dtype=kiln.float32 if float_zero else kiln.int32))
        self.ch_axis = getattr(self.activation_post_process, "ch_axis", -1)
        self.is_per_channel = self.qscheme in _PER_CHANNEL

    def calculate_qparams(self):
        return self.activation_post_process.calculate_qparams()

    def forward(self, X):
        if self.observer_enabled[0] == 1:
            self.activation_post_process(X.detach())
            scale, zero_point = self.calculate_qparams()
            scale = scale.to(self.scale.device)
            zero_point = zero_point.to(self.zero_point.device)
            if tuple(self.scale.shape) != tuple(scale.shape):      # a per-channel observer's
                self.scale = kiln.zeros(tuple(scale.shape), dtype=self.scale.dtype)
                self.zero_point = kiln.zeros(tuple(zero_point.shape),
                                             dtype=self.zero_point.dtype)
            with kiln.no_grad():
                self.scale.copy_(scale)
                self.zero_point.copy_(zero_point)
        if self.fake_quant_enabled[0] == 1:
            if self.is_per_channel:
                X = kiln.fake_quantize_per_channel_affine(X, self.scale, self.zero_point,
                                                          self.ch_axis, self.quant_min,
                                                          self.quant_max)
            else:
                X = kiln.fake_quantize_per_tensor_affine(X, self.scale, self.zero_point,
                                                         self.quant_min, self.quant_max)
        return X

    def extra_repr(self) -> str:
        return (f"fake_quant_enabled={self.fake_quant_enabled}, "
                f"observer_enabled={self.observer_enabled}, quant_min={self.quant_min}, "
                f"quant_max={self.quant_max}, dtype={self.dtype}, qscheme={self.qscheme}, "
                f"ch_axis={self.ch_axis}, scale={self.scale}, zero_point={self.zero_point}")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, missing: list,
                              errors: list, assign: bool) -> None:
        # a per-channel checkpoint's scale and zero point have their own length: the buffers
        # take the saved shape first, as PyTorch's module resizes them
        for name in ("scale", "zero_point"):
            value = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(value, kiln.Tensor) and tuple(value.shape) != tuple(current.shape):
                setattr(self, name, kiln.zeros(tuple(value.shape), dtype=current.dtype))
        super()._load_from_state_dict(state_dict, prefix, missing, errors, assign)


def _factories():
    from kiln.ao.quantization.observer import MovingAveragePerChannelMinMaxObserver
    act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0,
                                 quant_max=255, dtype=kiln.quint8,
                                 qscheme=_q.per_tensor_affine, reduce_range=True)
    weight = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-128,
                                    quant_max=127, dtype=kiln.qint8,
                                    qscheme=_q.per_tensor_symmetric, reduce_range=False)
    per_channel = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver,
                                         quant_min=-128, quant_max=127, dtype=kiln.qint8,
                                         qscheme=_q.per_channel_symmetric, reduce_range=False,
                                         ch_axis=0)
    return act, weight, per_channel


default_fake_quant, default_weight_fake_quant, default_per_channel_weight_fake_quant = \
    _factories()


def _switch(name: str, method: str):
    def apply(mod) -> None:
        if isinstance(mod, FakeQuantizeBase):
            getattr(mod, method)()
    apply.__name__ = name
    apply.__doc__ = f"`model.apply({name})`: {method}() on every fake-quantize module."
    return apply


disable_fake_quant = _switch("disable_fake_quant", "disable_fake_quant")
enable_fake_quant = _switch("enable_fake_quant", "enable_fake_quant")
disable_observer = _switch("disable_observer", "disable_observer")
enable_observer = _switch("enable_observer", "enable_observer")
