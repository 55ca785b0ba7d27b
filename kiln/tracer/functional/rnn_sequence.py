"""Eager recurrent layers on the CPU: one (layer, direction) of an LSTM, GRU or Elman RNN over
the whole sequence as one autograd node, as PyTorch's CPU (oneDNN) RNN layer does.

Step by step, each time step costs a matmul for h W_hh^T, the cell's node (`rnn_cells`) and a
slice and a stack, and backward one small matmul per step for W_hh's gradient besides the one
for h's: an eager 2-layer LSTM spent most of its step in that Python. Here the forward loops
over time in NumPy and records one node whose output packs the per-step outputs and the final
state(s) ((T, B, H) rows, then h_T, then c_T for an LSTM; the layer slices them out). Its rule
loops over time in reverse for the gate gradients and the h (and c) carries, then computes
W_hh's gradient as one matmul over all T*B rows (and GRU's b_hh's as one sum). The input
projection x W_ih^T + b_ih (+ b_hh where it is not scaled by a gate) is computed outside, as
one matmul for all steps, and its gradient is the gate gradients of all steps.

The forward and the rule are written once (`_forward`, `_backward`) over an array namespace:
NumPy for the node, and differentiable tensor ops where the rule itself is differentiated
(backward with create_graph, forward-mode AD's double vjp). There the rule recomputes the
sequence from the node's inputs with tensor ops and evaluates the same gradient formulas with
them, so its result is recorded op by op and its own gradient follows.

A trace (kiln.compile) still records the per-step composite, and cuda tensors keep their per-step
Triton cells; while saved_tensors_hooks are active the per-step ops run too, so the hooks see
the tensors they save.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import Primitive
from kiln.runtime.device import CPU
from kiln.tracer import autograd as _autograd
from kiln.tracer.dispatch_mode import ACTIVE as _MODES
from kiln.tracer import functional as F
from kiln.tracer.tensor import STATE, TRACING, Tensor

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
# what the forward keeps per time step for the rule, by mode: the state the step read (h_{t-1}
# in the direction's order; c too), the sigmoids of all gates (LSTM: i, f, (g), o; GRU: r, z),
# the tanh of LSTM's g and c' and GRU's n, GRU's W_hn h + b_hn, an RNN's output
_SAVED = {"LSTM": ("prev_h", "prev_c", "sig", "tg", "tc"),
          "GRU": ("prev_h", "rz", "n", "hw_n"),
          "RNN_TANH": ("prev_h", "act"), "RNN_RELU": ("prev_h", "act")}
_WIDTH = {"sig": 4, "rz": 2}            # in units of H; the others are H wide


class _Arrays:
    """NumPy, for the node's forward and its first-order rule."""

    @staticmethod
    def sigmoid(x):
        return 1 / (1 + np.exp(-x))         # as rnn_cells: the same values as the per-step path

    tanh = staticmethod(np.tanh)

    @staticmethod
    def relu(x):
        return np.maximum(x, 0)

    @staticmethod
    def positive(x):
        return (x > 0).astype(x.dtype)

    where = staticmethod(np.where)

    @staticmethod
    def steps(n, shape, like):
        """Room for n per-step arrays of `shape` (filled by `store[t] = ...`)."""
        return np.empty((n,) + shape, like.dtype)

    @staticmethod
    def cat_into(store, t, parts):
        np.concatenate(parts, -1, out=store[t])

    @staticmethod
    def stack(store):
        return store                        # `steps` made it one array

    @staticmethod
    def t(w):
        return w.T

    @staticmethod
    def weight_t(w):
        return np.ascontiguousarray(w.T)    # h @ W^T: a third faster than through the view


class _TensorOps:
    """Differentiable tensor ops, for a rule that is itself differentiated."""

    sigmoid, tanh, relu, where = (staticmethod(f) for f in (F.sigmoid, F.tanh, F.relu, F.where))

    @staticmethod
    def positive(x):
        return (x > 0).to(x.dtype)

    @staticmethod
    def steps(n, shape, like):
        return [None] * n

    @staticmethod
    def cat_into(store, t, parts):
        store[t] = F.cat(parts, -1)

    @staticmethod
    def stack(store):
        return F.stack(store, 0)

    @staticmethod
    def t(w):
        return w.transpose(0, 1)

    weight_t = t


def _forward(ops, mode: str, reverse: bool, xw, h, c, w_hh, b_hh, running, alive):
    """The sequence: (the outputs of the steps, then the final h and, for an LSTM, c; what the
    rule needs, per time step). `running` (T, B, 1 booleans) or None: where a sequence still
    runs, and `alive` the same as 0/1 in xw's dtype; past its end a sequence's state stays and
    its output is 0, as in the per-step path (`_keep_running`)."""
    steps, batch, hidden = xw.shape[0], xw.shape[1], w_hh.shape[1]
    w_t = ops.weight_t(w_hh)
    outs = ops.steps(steps + (2 if mode == "LSTM" else 1), (batch, hidden), xw)
    saved = {name: ops.steps(steps, (batch, _WIDTH.get(name, 1) * hidden), xw)
             for name in _SAVED[mode]}
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        x = xw[t]
        saved["prev_h"][t] = h
        if mode == "LSTM":
            gates = x + h @ w_t
            sig = ops.sigmoid(gates)            # one call for i, f and o (g's is not used)
            tg = ops.tanh(gates[..., 2 * hidden:3 * hidden])
            new_c = sig[..., hidden:2 * hidden] * c + sig[..., :hidden] * tg
            tc = ops.tanh(new_c)
            new_h = sig[..., 3 * hidden:] * tc
            saved["prev_c"][t], saved["sig"][t], saved["tg"][t], saved["tc"][t] = c, sig, tg, tc
            c = new_c if running is None else ops.where(running[t], new_c, c)
        elif mode == "GRU":
            hw = h @ w_t if b_hh is None else h @ w_t + b_hh
            rz = ops.sigmoid(x[..., :2 * hidden] + hw[..., :2 * hidden])
            z, hw_n = rz[..., hidden:], hw[..., 2 * hidden:]
            n = ops.tanh(x[..., 2 * hidden:] + rz[..., :hidden] * hw_n)
            new_h = (1 - z) * n + z * h
            saved["rz"][t], saved["n"][t], saved["hw_n"][t] = rz, n, hw_n
        else:
            pre = x + h @ w_t
            new_h = ops.relu(pre) if mode == "RNN_RELU" else ops.tanh(pre)
            saved["act"][t] = new_h
        h = new_h if running is None else ops.where(running[t], new_h, h)
        outs[t] = h if running is None else h * alive[t]
    outs[steps] = h
    if mode == "LSTM":
        outs[steps + 1] = c
    return outs, saved


def _backward(ops, mode: str, reverse: bool, w_hh, saved: dict, alive, d_out, dh, dc):
    """The gradients of xw (T, B, G*H), h0, c0 (LSTM), w_hh and b_hh (GRU) from those of the
    outputs (`d_out`, per time step) and of the final h and c; `saved`: what `_forward` kept,
    each stacked over time, and `alive` as for `_forward`. The pointwise factors are computed
    for all steps at once, so each step is a few products and the matmul for h's gradient;
    W_hh's gradient is one matmul over all T*B rows of the gate gradients."""
    prev_h = saved["prev_h"]
    steps, batch, hidden = prev_h.shape[0], prev_h.shape[1], w_hh.shape[1]
    lstm, gru = mode == "LSTM", mode == "GRU"
    if lstm:
        sig, tg, tc = saved["sig"], saved["tg"], saved["tc"]
        si, sf, so = sig[..., :hidden], sig[..., hidden:2 * hidden], sig[..., 3 * hidden:]
        f_o, f_c = tc * so * (1 - so), so * (1 - tc * tc)     # dh -> do, dh -> dc
        f_i, f_f = tg * si * (1 - si), saved["prev_c"] * sf * (1 - sf)      # dc -> di, df
        f_g = si * (1 - tg * tg)                                            # dc -> dg
    elif gru:
        rz, n = saved["rz"], saved["n"]
        r, z = rz[..., :hidden], rz[..., hidden:]
        f_n = (1 - z) * (1 - n * n)                                         # dh -> dn
        f_z = (saved["prev_h"] - n) * z * (1 - z)                           # dh -> dz
        f_r = saved["hw_n"] * r * (1 - r)                                   # dn -> dr
    else:
        act = saved["act"]
        f_act = ops.positive(act) if mode == "RNN_RELU" else 1 - act * act
    d_x = ops.steps(steps, (batch, w_hh.shape[0]), prev_h)
    # the gradient of h W_hh^T (+ b_hh) per step
    d_hw = ops.steps(steps, (batch, w_hh.shape[0]), prev_h) if gru else d_x
    for t in (range(steps) if reverse else range(steps - 1, -1, -1)):
        dh = dh + (d_out[t] if alive is None else d_out[t] * alive[t])
        if alive is not None:
            # past a sequence's end the step kept the old state: its gradient skips the step
            skip_h, dh = dh * (1 - alive[t]), dh * alive[t]
            if lstm:
                skip_c, dc = dc * (1 - alive[t]), dc * alive[t]
        if lstm:
            d_o = dh * f_o[t]
            dc = dc + dh * f_c[t]
            ops.cat_into(d_x, t, [dc * f_i[t], dc * f_f[t], dc * f_g[t], d_o])
            dc = dc * sf[t]
            dh = d_x[t] @ w_hh
        elif gru:
            d_n = dh * f_n[t]
            d_r, d_z = d_n * f_r[t], dh * f_z[t]
            ops.cat_into(d_x, t, [d_r, d_z, d_n])
            ops.cat_into(d_hw, t, [d_r, d_z, d_n * r[t]])   # the reset gate scales W_hn h + b_hn
            dh = dh * z[t] + d_hw[t] @ w_hh
        else:
            d_x[t] = dh * f_act[t]
            dh = d_x[t] @ w_hh
        if alive is not None:
            dh = dh + skip_h
            if lstm:
                dc = dc + skip_c
    d_x = ops.stack(d_x)
    d_hw = ops.stack(d_hw) if gru else d_x
    rows = d_hw.reshape(-1, d_hw.shape[-1])
    d_w = ops.t(rows) @ prev_h.reshape(-1, prev_h.shape[-1])
    return d_x, dh, dc if lstm else None, d_w, rows.sum(0) if gru else None


def _plain(t: Tensor, like: Tensor) -> bool:
    """Whether `t` is a CPU tensor of `like`'s dtype whose memory is current (not a stale view)
    and whose class adds nothing to how ops run (a Tensor, or a Parameter for the weights)."""
    return (type(t._data) is np.ndarray and t.dtype is like.dtype and t.device is CPU
            and (t._base is None or t._base[3] == t._version[0]))


def sequence(mode: str, reverse: bool, xw: Tensor, h0: Tensor, c0: Tensor | None,
             w_hh: Tensor, b_hh: Tensor | None, running: np.ndarray | None):
    """(outputs (T, B, H), final h, final c or None) of one layer and direction over the input
    projection `xw` (T, B, G*H) from the state h0 (and c0) (B, H), with `b_hh` only for a GRU
    (else folded into xw); `running` (T, B, 1) booleans or None: where each sequence is still
    inside its length (`reverse`: the direction runs from the last step). None where the
    per-step ops must run: under a trace, with saved-tensor hooks active, on another device or
    dtype, for a tensor subclass or a stale view, or for shapes the per-step ops would reject."""
    if TRACING[0] and STATE.tracer is not None or _autograd.saved_hooks_active() or \
            _MODES[0] and STATE.dispatch_modes:     # a TorchDispatchMode sees the per-step ops
        return None
    lstm = mode == "LSTM"
    if type(xw) is not Tensor or type(h0) is not Tensor or xw.dtype not in _DTYPES \
            or (lstm and type(c0) is not Tensor) or not isinstance(w_hh, Tensor) \
            or (b_hh is not None and not isinstance(b_hh, Tensor)):
        return None
    tensors = (xw, h0, w_hh) + ((c0,) if lstm else ()) + (() if b_hh is None else (b_hh,))
    if not all(_plain(t, xw) for t in tensors):
        return None
    xd, hd, wd = xw._data, h0._data, w_hh._data
    if xd.ndim != 3 or hd.ndim != 2 or wd.ndim != 2 or not xd.shape[0] or not hd.size:
        return None
    steps, batch = xd.shape[0], xd.shape[1]
    hidden, gates = hd.shape[1], GATES[mode] * hd.shape[1]
    if hd.shape != (batch, hidden) or wd.shape != (gates, hidden) or xd.shape[2] != gates \
            or (lstm and c0._data.shape != hd.shape) \
            or (b_hh is not None and b_hh._data.shape != (gates,)):
        return None
    cd = c0._data if lstm else None
    bd = None if b_hh is None else b_hh._data
    alive = None if running is None else running.astype(xd.dtype)
    with np.errstate(all="ignore"):     # exp overflow: sigmoid is 0 there, as the primitive
        outs, saved = _forward(_Arrays, mode, reverse, xd, hd, cd, wd, bd, running, alive)
    out = Tensor._make(outs, xw.dtype, CPU)
    if STATE.grad_enabled and any(t.requires_grad for t in tensors):
        kept = tuple(Tensor._make(saved[name], xw.dtype, CPU) for name in _SAVED[mode])
        _autograd.record(_SEQUENCE[mode], (xw, h0, c0, w_hh, b_hh) + kept,
                         {"reverse": reverse, "running": running}, out)
    return out[:steps], out[steps], out[steps + 1] if lstm else None


def _grad(g, out, xw, h0, c0, w_hh, b_hh, *kept, mode, reverse, running):
    steps, lstm = xw.shape[0], mode == "LSTM"
    if not STATE.grad_enabled and g.dtype is xw.dtype and g.device is xw.device:
        gd = g._data
        alive = None if running is None else running.astype(gd.dtype)
        saved = {name: t._data for name, t in zip(_SAVED[mode], kept)}
        with np.errstate(all="ignore"):
            grads = _backward(_Arrays, mode, reverse, w_hh._data, saved, alive, gd[:steps],
                              gd[steps], gd[steps + 1] if lstm else None)
        grads = tuple(None if a is None else Tensor._make(a, xw.dtype, CPU) for a in grads)
    else:
        # the rule is itself differentiated (create_graph, forward-mode AD): the sequence
        # recomputed from the inputs and the same formulas, as recorded tensor ops
        ops = _TensorOps
        mask = None if running is None else Tensor._make(running, dt.bool_, CPU)
        alive = None if mask is None else mask.to(xw.dtype)
        _, saved = _forward(ops, mode, reverse, xw, h0, c0, w_hh, b_hh, mask, alive)
        saved = {name: ops.stack(parts) for name, parts in saved.items()}
        grads = _backward(ops, mode, reverse, w_hh, saved, alive, g[:steps], g[steps],
                          g[steps + 1] if lstm else None)
    d_x, dh, dc, d_w, d_b = grads
    return (d_x, dh, dc, d_w, d_b) + (None,) * len(kept)


_DTYPES = (dt.float32, dt.float64)


def _primitive(mode: str) -> Primitive:
    def grad(g, out, *inputs, reverse, running):
        return _grad(g, out, *inputs, mode=mode, reverse=reverse, running=running)
    # the rule reads every input: the weights and initial states as the per-step ops do, xw to
    # recompute the sequence where it is differentiated, and its private saved activations
    return Primitive(f"{mode.lower()}_sequence", "custom", None, None, grad,
                     5 + len(_SAVED[mode]), reads=None,
                     doc=f"eager {mode} layer direction over a whole sequence (never traced)")


_SEQUENCE = {mode: _primitive(mode) for mode in GATES}
