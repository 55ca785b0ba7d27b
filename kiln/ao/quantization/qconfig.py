"""QConfig (torch.ao.quantization.qconfig): which observers quantize a layer's activation and
weight, and the defaults PyTorch ships for each backend."""

from __future__ import annotations

from collections import namedtuple

from kiln import nn
from kiln.ao.quantization.observer import (
    HistogramObserver, default_dynamic_quant_observer,
    default_observer, default_per_channel_weight_observer, default_placeholder_observer,
    default_weight_observer, default_float_qparams_observer)

__all__ = ["QConfig", "QConfigDynamic", "default_qconfig", "default_per_channel_qconfig",
           "default_dynamic_qconfig", "per_channel_dynamic_qconfig",
           "float_qparams_weight_only_qconfig", "get_default_qconfig", "QConfigAny"]


def _refuse_instances(activation, weight) -> None:
    if isinstance(activation, nn.Module) or isinstance(weight, nn.Module):
        raise ValueError("QConfig received observer instance, please pass observer class "
                         "instead. Use MyObserver.with_args(x=1) to override arguments to "
                         "constructor if needed")


class QConfig(namedtuple("QConfig", ["activation", "weight"])):
    """Observer factories (classes or `with_args` results) for activations and weights: prepare
    and quantize_dynamic make one observer per layer from them."""

    __slots__ = ()

    def __new__(cls, activation, weight):
        _refuse_instances(activation, weight)
        return super().__new__(cls, activation, weight)


class QConfigDynamic(namedtuple("QConfigDynamic", ["activation", "weight"])):
    """The older spelling of a dynamic QConfig (weights only matter)."""

    __slots__ = ()

    def __new__(cls, activation=nn.Identity, weight=nn.Identity):
        _refuse_instances(activation, weight)
        return super().__new__(cls, activation, weight)


QConfigAny = QConfig | None

default_qconfig = QConfig(activation=default_observer, weight=default_weight_observer)
default_per_channel_qconfig = QConfig(activation=default_observer,
                                      weight=default_per_channel_weight_observer)
default_dynamic_qconfig = QConfig(activation=default_dynamic_quant_observer,
                                  weight=default_weight_observer)
per_channel_dynamic_qconfig = QConfig(activation=default_dynamic_quant_observer,
                                      weight=default_per_channel_weight_observer)
float_qparams_weight_only_qconfig = QConfig(activation=default_placeholder_observer,
                                            weight=default_float_qparams_observer)
_BACKENDS = ("fbgemm", "x86", "qnnpack", "onednn")


def get_default_qconfig(backend: str = "x86", version: int = 0) -> QConfig:
    """PyTorch's post-training default for `backend`: a HistogramObserver for activations
    (7-bit with reduce_range on x86/fbgemm), per-channel symmetric int8 weights (per tensor for
    qnnpack)."""
    if backend not in _BACKENDS:
        raise AssertionError(f"backend: {backend} not supported. backend must be one of "
                             f"{list(_BACKENDS)}")
    if version != 0:
        raise AssertionError(f"Version number: {version} in get_default_qconfig is not "
                             "supported. Version number must be 0")
    reduce = backend in ("fbgemm", "x86")
    weight = default_weight_observer if backend == "qnnpack" else \
        default_per_channel_weight_observer
    return QConfig(activation=HistogramObserver.with_args(reduce_range=reduce), weight=weight)


