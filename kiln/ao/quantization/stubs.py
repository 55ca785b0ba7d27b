"""QuantStub / DeQuantStub / QuantWrapper: where a float model's quantized region begins and
ends. Before convert they pass values through (QuantStub's observer watches them)."""

from __future__ import annotations

from kiln import nn

__all__ = ["QuantStub", "DeQuantStub", "QuantWrapper"]


class _Stub(nn.Module):
    """An identity that marks where convert puts a (de)quantization."""

    def __init__(self, qconfig=None):
        super().__init__()
        if qconfig:
            self.qconfig = qconfig

    def forward(self, x):
        return x


class QuantStub(_Stub):
    """Identity until convert, which swaps in nn.quantized.Quantize with the observed params."""


class DeQuantStub(_Stub):
    """Identity until convert, which swaps in nn.quantized.DeQuantize."""


class QuantWrapper(nn.Module):
    """`module` between a QuantStub and a DeQuantStub (the wrapped model's qconfig is used)."""

    def __init__(self, module):
        super().__init__()
        qconfig = getattr(module, "qconfig", None)
        self.add_module("quant", QuantStub(qconfig))
        self.add_module("dequant", DeQuantStub(qconfig))
        self.add_module("module", module)
        self.train(module.training)

    def forward(self, x):
        return self.dequant(self.module(self.quant(x)))
