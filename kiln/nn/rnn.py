"""Recurrent layers: RNN, LSTM, GRU (multi-layer, bidirectional) and their single-step cells."""

from __future__ import annotations

import math

import numpy as np

import kiln
from kiln import Tensor
from kiln.nn import functional as F
from kiln.nn import init
from kiln.nn.module import Module
from kiln.nn.parameter import Parameter
from kiln.nn.utils.rnn import PackedSequence, _pack_with_order, pad_packed_sequence

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


# ----------------------------------------------------------------------------- one time step
# Each step takes the input projection x W_ih^T + b_ih already computed for all time steps at
# once (one big matmul instead of one per step), plus the recurrent weights.

def _rnn_step(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, relu: bool) -> Tensor:
    pre = xw + F.linear(h, w_hh, b_hh)
    return F.relu(pre) if relu else kiln.tanh(pre)


def _lstm_step(xw: Tensor, state: tuple, w_hh: Tensor, b_hh: Tensor | None) -> tuple:
    h, c = state
    gates = xw + F.linear(h, w_hh, b_hh)
    done = kiln._lstm_cell(gates, c)        # eagerly: the pointwise part in one step
    if done is not None:
        return done
    i, f, g, o = kiln.chunk(gates, 4, -1)
    c = kiln.sigmoid(f) * c + kiln.sigmoid(i) * kiln.tanh(g)
    return kiln.sigmoid(o) * kiln.tanh(c), c


def _gru_step(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    hw = F.linear(h, w_hh, b_hh)
    done = kiln._gru_cell(xw, hw, h)        # eagerly on the CPU: the pointwise part in one step
    if done is not None:
        return done
    x_r, x_z, x_n = kiln.chunk(xw, 3, -1)
    h_r, h_z, h_n = kiln.chunk(hw, 3, -1)
    r = kiln.sigmoid(x_r + h_r)
    z = kiln.sigmoid(x_z + h_z)
    n = kiln.tanh(x_n + r * h_n)     # the reset gate scales W_hn h + b_hn, as in PyTorch
    return (1 - z) * n + z * h


def _time_steps(x: Tensor) -> list:
    """x[0], x[1], ... along dim 0; traced, split as a balanced tree.

    Eagerly, autograd adds each step's gradient into one buffer of the input's size
    (`autograd._add_slice_grad`). A traced backward pads each slice's gradient to the input's
    size instead, which costs O(T^2) for T steps unbound directly; halving recursively costs
    O(T log T).
    """
    steps = x.shape[0]
    if steps <= 4 or not kiln.compiler.is_compiling():
        return list(kiln.unbind(x, 0))
    half = steps // 2
    return _time_steps(x[:half]) + _time_steps(x[half:])


def _keep_running(running: Tensor, new_state, old_state, lstm: bool):
    """The new state where the sequence still runs, the old one where it has ended."""
    if lstm:
        return (kiln.where(running, new_state[0], old_state[0]),
                kiln.where(running, new_state[1], old_state[1]))
    return kiln.where(running, new_state, old_state)


# ----------------------------------------------------------------------------- full sequences


def _packed_dropout_noise(padded: Tensor, p: float, lengths: list, order) -> Tensor:
    """Dropout noise for a packed sequence's padded (T, B, F) layout, drawn as PyTorch draws
    it: one row per packed row (time-major, each step's sequences in sorted order), so the
    same seed drops the same elements. Padding positions get some row; they hold zeros."""
    lengths = np.asarray(lengths)
    order = np.asarray(order if order is not None else range(len(lengths)))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    steps = padded.shape[0]
    sizes = (lengths[None, :] > np.arange(steps)[:, None]).sum(1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows = offsets[:, None] + rank[None, :]
    rows[np.arange(steps)[:, None] >= lengths[None, :]] = 0
    keep = F._dropout_noise((int(sizes.sum()), padded.shape[-1]), p, padded)
    return keep[kiln.tensor(rows, device=padded.device)]


class RNNBase(Module):
    """Parameters and the layer/direction loop shared by RNN, LSTM and GRU."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None,
                 dtype=None) -> None:
        super().__init__()
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable "
                             "projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError("hidden_size and num_layers must be greater than zero")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional = float(dropout), bidirectional
        self.proj_size = proj_size
        directions = 2 if bidirectional else 1
        gate_size = _GATES[mode] * hidden_size
        out_size = proj_size or hidden_size          # h's features: the projection's if any
        self._flat_weights_names = []
        for layer in range(num_layers):
            for direction in range(directions):
                layer_input = input_size if layer == 0 else out_size * directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = {"weight_ih": (gate_size, layer_input),
                          "weight_hh": (gate_size, out_size)}
                if bias:
                    shapes.update({"bias_ih": (gate_size,), "bias_hh": (gate_size,)})
                if proj_size:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                for kind, shape in shapes.items():
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, Parameter(kiln.empty(*shape, dtype=dtype,
                                                             device=device)))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    @property
    def all_weights(self) -> list:
        per = (4 if self.bias else 2) + (1 if self.proj_size else 0)
        return [[getattr(self, n) for n in self._flat_weights_names[i:i + per]]
                for i in range(0, len(self._flat_weights_names), per)]

    def _weights(self, layer: int, direction: int) -> tuple:
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        get = lambda kind: getattr(self, kind + suffix) if self.bias or "weight" in kind \
            else None
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _step(self, xw, state, w_hh, b_hh, w_hr=None):
        if self.mode == "LSTM":
            h, c = _lstm_step(xw, state, w_hh, b_hh)
            return (h, c) if w_hr is None else (F.linear(h, w_hr), c)
        if self.mode == "GRU":
            return _gru_step(xw, state, w_hh, b_hh)
        return _rnn_step(xw, state, w_hh, b_hh, self.mode == "RNN_RELU")

    def _zero_state(self, input: Tensor, batch: int, size: int | None = None) -> Tensor:
        directions = 2 if self.bidirectional else 1
        return kiln.zeros(self.num_layers * directions, batch, size or self.hidden_size,
                          dtype=input.dtype, device=input.device)

    def flatten_parameters(self) -> None:
        """A no-op: PyTorch compacts cuDNN's weight buffer here; kiln keeps no such buffer."""

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            # run the padded batch in its original order, each sequence's state frozen past
            # its length; then repack the output in the input's order
            # (padded batch-first when the module is: _forward reads its input that way)
            padded, lengths = pad_packed_sequence(input, self.batch_first)
            order = (input.sorted_indices.tolist() if input.sorted_indices is not None
                     else list(range(len(lengths))))
            output, state = self._forward(padded, hx, lengths.tolist(), order)
            packed = _pack_with_order(output, lengths.tolist(), np.asarray(order),
                                      self.batch_first)
            if input.sorted_indices is None:
                packed = packed._replace(sorted_indices=None, unsorted_indices=None)
            return packed, state
        return self._forward(input, hx, None)

    def _check_hidden(self, unbatched: bool, h0: Tensor, c0: Tensor | None) -> None:
        """The initial state has the input's batching (PyTorch's words): a batch of one would
        otherwise broadcast over the whole batch."""
        want = 2 if unbatched else 3
        kind = "unbatched 2-D" if unbatched else "batched 3-D"
        if c0 is None and h0.ndim != want:
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got "
                               f"{h0.ndim}-D tensor")
        if c0 is not None and (h0.ndim, c0.ndim) != (want, want):
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                               f"({h0.ndim}-D, {c0.ndim}-D) tensors")

    def _forward(self, input: Tensor, hx, lengths: list | None, order=None):
        unbatched = input.ndim == 2
        if input.ndim not in (2, 3):
            raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got "
                             f"{input.ndim}D instead")
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first
                                                  else input)
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {x.shape[-1]}")
        steps, batch = x.shape[0], x.shape[1]
        lstm = self.mode == "LSTM"
        directions = 2 if self.bidirectional else 1
        if hx is None:
            h0 = self._zero_state(x, batch, self.proj_size)
            c0 = self._zero_state(x, batch) if lstm else None
        else:
            h0, c0 = hx if lstm else (hx, None)
            self._check_hidden(unbatched, h0, c0)
            if unbatched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if lstm else None
            layers = self.num_layers * directions
            for i, (state, size) in enumerate(((h0, self.proj_size or self.hidden_size),
                                               (c0, self.hidden_size))):
                if state is not None and tuple(state.shape) != (layers, batch, size):
                    which = f"hidden[{i}]" if lstm else "hidden"
                    raise RuntimeError(f"Expected {which} size {(layers, batch, size)}, got "
                                       f"{list(state.shape)}")
        running = mask = None
        if lengths is not None:
            # mask[t] (running[t] as a tensor): (batch, 1) booleans, True while step t is
            # inside the sequence
            mask = np.arange(steps)[:, None, None] < np.asarray(lengths)[None, :, None]
        final_h, final_c = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, direction)
                w_hr = getattr(self, f"weight_hr_l{layer}" + ("_reverse" if direction else
                                                               "")) if self.proj_size else None
                index = layer * directions + direction
                state = (h0[index], c0[index]) if lstm else h0[index]
                xw = F.linear(layer_input, w_ih, b_ih)
                step_bias = b_hh
                if b_hh is not None and self.mode != "GRU":
                    # b_hh joins the input projection once, for every time step (GRU's stays in
                    # its step: the reset gate scales it): the steps then add no bias, and its
                    # gradient is one sum over the sequence instead of one per step
                    xw, step_bias = xw + b_hh, None
                # eagerly on the CPU: the whole sequence as one autograd node (rnn_sequence;
                # not with projections, which it does not compute)
                done = None if w_hr is not None else kiln._rnn_sequence(
                    self.mode, bool(direction), xw, state[0] if lstm else state,
                    state[1] if lstm else None, w_hh, step_bias, mask)
                if done is not None:
                    out, h, c = done
                    outputs.append(out)
                    final_h.append(h)
                    if lstm:
                        final_c.append(c)
                    continue
                if mask is not None and running is None:
                    running = [kiln.tensor(m, device=x.device) for m in mask]
                xw = _time_steps(xw)
                times = range(steps - 1, -1, -1) if direction else range(steps)
                hs = [None] * steps
                for t in times:
                    new_state = self._step(xw[t], state, w_hh, step_bias, w_hr)
                    if running is not None:
                        new_state = _keep_running(running[t], new_state, state, lstm)
                    state = new_state
                    hs[t] = state[0] if lstm else state
                    if running is not None:
                        hs[t] = hs[t] * running[t].to(hs[t].dtype)
                outputs.append(kiln.stack(hs, 0) if steps else layer_input[..., :0])
                final_h.append(state[0] if lstm else state)
                if lstm:
                    final_c.append(state[1])
            layer_input = outputs[0] if directions == 1 else kiln.cat(outputs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                if lengths is None:
                    layer_input = F.dropout(layer_input, self.dropout, True)
                else:
                    layer_input = layer_input * _packed_dropout_noise(
                        layer_input, self.dropout, lengths, order)
        output = layer_input
        h_n = kiln.stack(final_h, 0)
        c_n = kiln.stack(final_c, 0) if lstm else None
        if unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        elif self.batch_first:
            output = output.transpose(0, 1)
        return (output, (h_n, c_n)) if lstm else (output, h_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if getattr(self, "proj_size", 0) != 0:       # (quantized LSTM borrows this repr)
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s


class RNN(RNNBase):
    """Elman RNN: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) (or relu)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device=device, dtype=dtype)


class LSTM(RNNBase):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None,
                 dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype)


class GRU(RNNBase):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None,
                 dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device=device, dtype=dtype)


# ----------------------------------------------------------------------------- cells

class RNNCellBase(Module):
    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        gate = num_chunks * hidden_size
        self.weight_ih = Parameter(kiln.empty(gate, input_size, dtype=dtype, device=device))
        self.weight_hh = Parameter(kiln.empty(gate, hidden_size, dtype=dtype, device=device))
        if bias:
            self.bias_ih = Parameter(kiln.empty(gate, dtype=dtype, device=device))
            self.bias_hh = Parameter(kiln.empty(gate, dtype=dtype, device=device))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def _batched(self, input: Tensor, hx):
        if input.ndim not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got "
                             f"{input.ndim}D instead")
        return input.ndim == 1, (input.unsqueeze(0) if input.ndim == 1 else input)

    def _zeros(self, x: Tensor) -> Tensor:
        return kiln.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s


class RNNCell(RNNCellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        single, x = self._batched(input, hx)
        h = self._zeros(x) if hx is None else (hx.unsqueeze(0) if single else hx)
        out = _rnn_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh,
                        self.bias_hh, self.nonlinearity == "relu")
        return out.squeeze(0) if single else out


class LSTMCell(RNNCellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx: tuple | None = None) -> tuple:
        single, x = self._batched(input, hx)
        if hx is None:
            h, c = self._zeros(x), self._zeros(x)
        else:
            h, c = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if single else hx
        h, c = _lstm_step(F.linear(x, self.weight_ih, self.bias_ih), (h, c), self.weight_hh,
                          self.bias_hh)
        return (h.squeeze(0), c.squeeze(0)) if single else (h, c)


class GRUCell(RNNCellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        single, x = self._batched(input, hx)
        h = self._zeros(x) if hx is None else (hx.unsqueeze(0) if single else hx)
        out = _gru_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh,
                        self.bias_hh)
        return out.squeeze(0) if single else out
