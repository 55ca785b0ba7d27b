"""Which quantized module replaces which float module (torch.ao.quantization's
quantization_mappings), for `convert` and `quantize_dynamic`, and which modules get observers."""

from __future__ import annotations

from kiln import nn
from kiln.ao.nn import intrinsic as nni
from kiln.ao.nn import quantized as nnq
from kiln.ao.nn.quantized import dynamic as nnqd
from kiln.ao.nn.intrinsic import quantized as nniq
from kiln.ao.quantization.stubs import DeQuantStub, QuantStub

__all__ = ["get_default_static_quant_module_mappings",
           "get_default_dynamic_quant_module_mappings", "get_default_qconfig_propagation_list"]

FUNCTIONAL_TYPES = (nnq.FloatFunctional, nnq.QFunctional)


def get_default_static_quant_module_mappings() -> dict:
    return {QuantStub: nnq.Quantize, DeQuantStub: nnq.DeQuantize, nn.Linear: nnq.Linear,
            nn.Conv2d: nnq.Conv2d, nni.ConvReLU2d: nniq.ConvReLU2d,
            nni.LinearReLU: nniq.LinearReLU, nnq.FloatFunctional: nnq.QFunctional}


def get_default_dynamic_quant_module_mappings() -> dict:
    return {nn.Linear: nnqd.Linear, nn.LSTM: nnqd.LSTM}


def get_default_qconfig_propagation_list() -> set:
    """The module types prepare observes (and whose qconfig it keeps)."""
    return (set(get_default_static_quant_module_mappings()) |
            set(get_default_dynamic_quant_module_mappings()) | {nn.Sequential})
