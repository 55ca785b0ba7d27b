"""Dynamically quantized modules (torch.ao.nn.quantized.dynamic): int8 weights, float
activations quantized afresh on every call from their own min and max, float outputs."""

from __future__ import annotations

import reprlib

import numpy as np

import kiln
from kiln.ao.nn.quantized import kernels
from kiln.ao.nn.quantized.modules import Linear as _QuantizedLinear, quantize_weight
from kiln.tracer.quantized import QuantizedTensor, on_cpu

__all__ = ["Linear", "LSTM"]


class Linear(_QuantizedLinear):
    """nn.Linear with a qint8 weight: `y = x W^T + b` with x quantized per call (with the x86
    engine's reduce_range: activations use 7 bits), the product in integers, b added in float.
    The output equals PyTorch's to the last bit in our tests."""

    _FLOAT_NAME = "DynamicQuantizedLinear"

    def __init__(self, in_features: int, out_features: int, bias_: bool = True,
                 dtype=kiln.qint8):
        super().__init__(in_features, out_features, bias_, dtype=dtype)

    def forward(self, x):
        return kernels.linear_dynamic(x, self._weight_q, self._bias_f, reduce_range=True)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"dtype={self._weight_q.dtype}, qscheme={self._weight_q.qscheme()}")

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False) -> "Linear":
        """The dynamic module for a float nn.Linear (or LinearReLU, whose ReLU is dropped as in
        PyTorch) carrying a `qconfig`: its weight observer sees the weight once."""
        from kiln.ao.nn.intrinsic import LinearReLU
        from kiln.ao.quantization.qconfig import default_dynamic_qconfig
        if type(mod) not in (kiln.nn.Linear, LinearReLU):
            raise AssertionError(f"nn.quantized.dynamic.Linear.from_float only works for "
                                 f"Linear and LinearReLU, got {type(mod).__name__}")
        if not hasattr(mod, "qconfig"):
            raise AssertionError("Input float module must have qconfig defined")
        if type(mod) is LinearReLU:
            mod = mod[0]
        qconfig = mod.qconfig if mod.qconfig is not None and mod.qconfig.weight is not None \
            else default_dynamic_qconfig
        observer = qconfig.weight()
        if observer.dtype is not kiln.qint8:
            raise NotImplementedError(f"kiln's dynamic Linear quantizes weights to qint8 only, "
                                      f"got {observer.dtype} (float16 is not in kiln)")
        observer(mod.weight)
        out = cls(mod.in_features, mod.out_features, dtype=kiln.qint8)
        out.set_weight_bias(quantize_weight(mod.weight.detach().float(), observer), mod.bias)
        return out


class LSTM(kiln.nn.Module):
    """nn.LSTM with qint8 weights (torch's dynamic LSTM): each layer and direction projects its
    whole input sequence with one dynamically quantized product, then steps with the hidden
    state quantized afresh each step. Outputs agree with PyTorch's to float32 rounding of the
    gates (sigmoid and tanh round differently); a hidden value on a rounding boundary can then
    quantize one step apart."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype=kiln.qint8):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.dtype = bidirectional, dtype
        self.training = False
        self._cells: list = []      # (w_ih, b_ih, w_hh, b_hh) per layer and direction

    def _get_name(self) -> str:
        return "DynamicQuantizedLSTM"

    extra_repr = kiln.nn.LSTM.extra_repr    # the float LSTM's: the same hyperparameters

    # state_dict: one `_all_weight_values.{k}.param` per layer and direction, as PyTorch's keys
    # (PyTorch stores an opaque packed object there; kiln the tuple (w_ih, b_ih, w_hh, b_hh),
    # the weights quantized tensors, the biases float)
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for k, (w_ih, b_ih, w_hh, b_hh) in enumerate(self._cells):
            destination[f"{prefix}_all_weight_values.{k}.param"] = (
                w_ih, kiln.tensor(b_ih), w_hh, kiln.tensor(b_hh))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, missing: list,
                              errors: list, assign: bool) -> None:
        super()._load_from_state_dict(state_dict, prefix, missing, errors, assign)
        cells = []
        for k, current in enumerate(self._cells):
            key = f"{prefix}_all_weight_values.{k}.param"
            if key not in state_dict:
                missing.append(key)
                return
            value = state_dict[key]
            shapes = [tuple(v.shape) for v in current]
            if not (isinstance(value, tuple) and len(value) == 4
                    and isinstance(value[0], QuantizedTensor)
                    and isinstance(value[2], QuantizedTensor)
                    and [tuple(v.shape) for v in value] == shapes):
                errors.append(f"While copying {key!r} of DynamicQuantizedLSTM: expected kiln's "
                              f"(w_ih, b_ih, w_hh, b_hh) with shapes {shapes} (quantized "
                              f"weights), got {reprlib.repr(value)}")
                return
            w_ih, b_ih, w_hh, b_hh = value
            cells.append((w_ih, b_ih.detach().numpy().astype(np.float32), w_hh,
                          b_hh.detach().numpy().astype(np.float32)))
        self._cells = cells

    def forward(self, input, hx=None):
        kernels.check_engine("quantized_lstm")
        if not isinstance(input, kiln.Tensor) or input.ndim != 3:
            raise NotImplementedError(
                "DynamicQuantizedLSTM: kiln takes a batched 3-D float32 input (no "
                "PackedSequence, no unbatched input), got "
                f"{getattr(input, 'shape', type(input).__name__)}")
        on_cpu("quantized_lstm", input)
        x = input.detach().numpy().astype(np.float32)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"DynamicQuantizedLSTM: input.size(-1) must be equal to "
                               f"input_size. Expected {self.input_size}, got {x.shape[-1]}")
        directions = 2 if self.bidirectional else 1
        shape = (self.num_layers * directions, x.shape[1], self.hidden_size)
        h0, c0 = (np.zeros(shape, np.float32),) * 2 if hx is None else \
            (hx[0].detach().cpu().numpy(), hx[1].detach().cpu().numpy())
        h_n, c_n = np.empty(shape, np.float32), np.empty(shape, np.float32)
        for layer in range(self.num_layers):
            outputs = []
            for d in range(directions):
                k = layer * directions + d
                out, h_n[k], c_n[k] = kernels.lstm_layer_dynamic(x, self._cells[k], h0[k],
                                                                 c0[k], reverse=d == 1)
                outputs.append(out)
            x = np.concatenate(outputs, axis=-1)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        return (kiln.tensor(np.ascontiguousarray(x)),
                (kiln.tensor(h_n), kiln.tensor(c_n)))

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False) -> "LSTM":
        """The dynamic LSTM for a float nn.LSTM with a qconfig: each weight quantized by its own
        weight observer, the biases kept in float."""
        from kiln.ao.quantization.qconfig import default_dynamic_qconfig
        if type(mod) is not kiln.nn.LSTM:
            raise AssertionError(f"nn.quantized.dynamic.LSTM.from_float only works for "
                                 f"nn.LSTM, got {type(mod).__name__}")
        if not hasattr(mod, "qconfig"):
            raise AssertionError("Input float module must have qconfig defined")
        if not mod.bias or mod.proj_size:
            raise NotImplementedError("kiln's dynamic LSTM needs bias=True and no proj_size "
                                      "(as PyTorch's)")
        qconfig = mod.qconfig if mod.qconfig is not None and mod.qconfig.weight is not None \
            else default_dynamic_qconfig
        if qconfig.weight().dtype is not kiln.qint8:
            raise NotImplementedError("kiln's dynamic LSTM quantizes weights to qint8 only")
        out = cls(mod.input_size, mod.hidden_size, mod.num_layers, mod.bias, mod.batch_first,
                  mod.dropout, mod.bidirectional)

        def quantized(w):
            observer = qconfig.weight()
            observer(w)
            return quantize_weight(w.detach().float(), observer)

        for layer in range(mod.num_layers):
            for suffix in ("", "_reverse")[:2 if mod.bidirectional else 1]:
                part = lambda name: getattr(mod, f"{name}_l{layer}{suffix}")  # noqa: E731
                out._cells.append((quantized(part("weight_ih")),
                                   part("bias_ih").detach().numpy().astype(np.float32),
                                   quantized(part("weight_hh")),
                                   part("bias_hh").detach().numpy().astype(np.float32)))
        return out
