"""Recurrent cells' pointwise part in one step, eagerly: LSTM (gates, c) -> (h, c') and GRU
(x W_ih + b_ih, h W_hh + b_hh, h) -> h'.

The composite (`chunk` into i, f, g, o; three sigmoids, two tanh, three products and a sum)
is eleven dispatches and as many autograd nodes per time step, and its backward pads each of
the four chunks' gradients back to the gates' size and adds them: an eager LSTM on the CPU
spent most of its step in that Python, and on a GPU each is a device call. Outside a trace
the same array expressions run here directly (so the values are bitwise the composite's) and
two autograd nodes are recorded: c' = sigmoid(f) * c + sigmoid(i) * tanh(g) and
h = sigmoid(o) * tanh(c'), each with its whole gradient. A trace still records the composite,
which the compiler fuses; the nodes' primitives below are never registered or traced. On cuda
the step and each node's gradient are one Triton launch each (`kiln.runtime.rnn_cell_gpu`).

The GRU step (`gru`) is the same idea with one node, h' = (1 - z) n + z h; on cuda its forward
and its gradient are one launch each too.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import Primitive
from kiln.runtime import rnn_cell_gpu
from kiln.tracer import autograd as _autograd
from kiln.tracer.dispatch_mode import ACTIVE as _MODES
from kiln.tracer.tensor import STATE, TRACING, Tensor

_DTYPES = (dt.float32, dt.float64)


def _hidden(state: Tensor, projections: tuple, parts: int) -> int | None:
    """H when a cell step applies to `state` (..., H) and `projections` (each (..., parts * H)):
    outside a trace, plain tensors of one float32/float64 dtype and one device, none a stale
    view; else None (the composite runs)."""
    if TRACING[0] and STATE.tracer is not None or _MODES[0] and STATE.dispatch_modes:
        return None                     # (a TorchDispatchMode sees the composite's ops)
    for t in (state, *projections):
        if type(t) is not Tensor or t.dtype is not state.dtype or t.device is not state.device \
                or (t._base is not None and t._base[3] != t._version[0]):
            return None
    if state.dtype not in _DTYPES or not state._data.ndim or not state._data.shape[-1]:
        return None
    hidden = state._data.shape[-1]
    wide = state._data.shape[:-1] + (parts * hidden,)
    return hidden if all(p._data.shape == wide for p in projections) else None


def lstm(gates: Tensor, c: Tensor):
    """(h, c') for `gates` (..., 4H) and `c` (..., H), or None where the composite must run."""
    hidden = _hidden(c, (gates,), 4)
    if hidden is None:
        return None
    gd, cd = gates._data, c._data
    if gates.device.type == "meta":
        return None                     # no data: the composite gives meta results
    if gates.device.type != "cpu":
        return _on_cuda(gates, c) if rnn_cell_gpu.supported(gd, cd) else None
    with np.errstate(all="ignore"):        # exp overflow: sigmoid is 0 there, as the primitive
        si = 1 / (1 + np.exp(-gd[..., :hidden]))
        sf = 1 / (1 + np.exp(-gd[..., hidden:2 * hidden]))
        tg = np.tanh(gd[..., 2 * hidden:3 * hidden])
        so = 1 / (1 + np.exp(-gd[..., 3 * hidden:]))
        c_new = sf * cd + si * tg
        tc = np.tanh(c_new)
        h = so * tc
    make = Tensor._make
    kind, device = gates.dtype, gates.device
    c_out, h_out = make(c_new, kind, device), make(h, kind, device)
    if STATE.grad_enabled and (gates.requires_grad or c.requires_grad):
        saved = lambda a: make(a, kind, device)
        _autograd.record(_CELL_C, (gates, c, saved(si), saved(sf), saved(tg)), {}, c_out)
        _autograd.record(_CELL_H, (gates, c_out, saved(so), saved(tc)), {}, h_out)
    return h_out, c_out


def _on_cuda(gates: Tensor, c: Tensor):
    """The step as one kernel launch (`kiln.runtime.rnn_cell_gpu`), and nodes whose gradients are
    one launch each; they recompute the activations from the gates."""
    xp = gates.device.xp
    h, c_new = rnn_cell_gpu.forward(xp, gates._data, c._data)
    make = Tensor._make
    kind, device = gates.dtype, gates.device
    c_out, h_out = make(c_new, kind, device), make(h, kind, device)
    if STATE.grad_enabled and (gates.requires_grad or c.requires_grad):
        _autograd.record(_CELL_C_CUDA, (gates, c), {}, c_out)
        _autograd.record(_CELL_H_CUDA, (gates, c_out), {}, h_out)
    return h_out, c_out


def _cuda_grad_c(g, out, gates, c):
    if _first_order(g, c):
        dgates, dc = rnn_cell_gpu.grad_c(g.device.xp, gates._data, c._data, g._data)
        return (Tensor._make(dgates, gates.dtype, gates.device),
                Tensor._make(dc, c.dtype, c.device))
    return _cell_c_grad(g, out, gates, c, None, None, None)[:2]


def _cuda_grad_h(g, out, gates, c_new):
    if _first_order(g, c_new):
        dgates, dc = rnn_cell_gpu.grad_h(g.device.xp, gates._data, c_new._data, g._data)
        return (Tensor._make(dgates, gates.dtype, gates.device),
                Tensor._make(dc, c_new.dtype, c_new.device))
    return _cell_h_grad(g, out, gates, c_new, None, None)[:2]


def _first_order(g: Tensor, like: Tensor) -> bool:
    """Whether a gradient is computed on the arrays: not while building a graph of the backward
    (create_graph), and only for a gradient of the output's dtype and device."""
    return not STATE.grad_enabled and g.dtype is like.dtype and g.device is like.device


def _cell_c_grad(g, out, gates, c, si, sf, tg):
    if si is not None and _first_order(g, c):
        gd = g._data
        di = gd * tg._data * si._data * (1 - si._data)
        df = gd * c._data * sf._data * (1 - sf._data)
        dg = gd * si._data * (1 - tg._data * tg._data)
        dgates = np.concatenate([di, df, dg, np.zeros_like(di)], axis=-1)
        make = Tensor._make
        return (make(dgates, gates.dtype, gates.device), make(gd * sf._data, c.dtype, c.device),
                None, None, None)
    # create_graph: the composite's rules as differentiable ops of the gates themselves
    from kiln.tracer import functional as F
    i, f, gg, _ = F.chunk(gates, 4, -1)
    si, sf, tg = F.sigmoid(i), F.sigmoid(f), F.tanh(gg)
    di = g * tg * si * (1 - si)
    df = g * c * sf * (1 - sf)
    dg = g * si * (1 - tg * tg)
    return (F.cat([di, df, dg, F.zeros_like(di)], -1), g * sf, None, None, None)


def _cell_h_grad(g, out, gates, c_new, so, tc):
    if so is not None and _first_order(g, c_new):
        gd = g._data
        do = gd * tc._data * so._data * (1 - so._data)
        dc = gd * so._data * (1 - tc._data * tc._data)
        zeros = np.zeros(do.shape[:-1] + (3 * do.shape[-1],), dtype=do.dtype)
        make = Tensor._make
        return (make(np.concatenate([zeros, do], axis=-1), gates.dtype, gates.device),
                make(dc, c_new.dtype, c_new.device), None, None)
    from kiln.tracer import functional as F
    o = F.chunk(gates, 4, -1)[3]
    so, tc = F.sigmoid(o), F.tanh(c_new)
    do = g * tc * so * (1 - so)
    zeros = F.zeros_like(do)
    return (F.cat([zeros, zeros, zeros, do], -1), g * so * (1 - tc * tc), None, None)


# Each rule reads the saved activations (private tensors no one writes) and, for c', the
# previous cell state: an in-place write to c before backward is an error, as in PyTorch.
_CELL_C = Primitive("lstm_cell_c", "custom", None, None, _cell_c_grad, 5, reads=(1, 2, 3, 4),
                    doc="eager LSTM cell state c' = sigmoid(f) c + sigmoid(i) tanh(g) (never "
                        "traced)")
_CELL_H = Primitive("lstm_cell_h", "custom", None, None, _cell_h_grad, 4, reads=(2, 3),
                    doc="eager LSTM cell output h = sigmoid(o) tanh(c') (never traced)")
# on cuda the rules recompute the activations from the gates (and read c, c')
_CELL_C_CUDA = Primitive("lstm_cell_c", "custom", None, None, _cuda_grad_c, 2, reads=(0, 1),
                         doc="eager LSTM cell state on cuda (never traced)")
_CELL_H_CUDA = Primitive("lstm_cell_h", "custom", None, None, _cuda_grad_h, 2, reads=(0, 1),
                         doc="eager LSTM cell output on cuda (never traced)")
# next_functions shows the gates and the cell state, not the saved activations
_autograd.show_inputs(_CELL_C, 2)
_autograd.show_inputs(_CELL_H, 2)


# ----------------------------------------------------------------------------- GRU

def gru(xw: Tensor, hw: Tensor, h: Tensor):
    """h' of a GRU step from the input and hidden projections xw, hw (..., 3H: r, z, n) and h
    (..., H), or None where the composite must run."""
    hidden = _hidden(h, (xw, hw), 3)
    if hidden is None:
        return None
    xd, hd, h0 = xw._data, hw._data, h._data
    if xw.device.type == "meta":
        return None
    if xw.device.type != "cpu":
        return _gru_on_cuda(xw, hw, h) if rnn_cell_gpu.supported(xd, h0) else None
    two = 2 * hidden
    with np.errstate(all="ignore"):
        r = 1 / (1 + np.exp(-(xd[..., :hidden] + hd[..., :hidden])))
        z = 1 / (1 + np.exp(-(xd[..., hidden:two] + hd[..., hidden:two])))
        n = np.tanh(xd[..., two:] + r * hd[..., two:])
        out = (1 - z) * n + z * h0
    result = Tensor._make(out, xw.dtype, xw.device)
    if STATE.grad_enabled and (xw.requires_grad or hw.requires_grad or h.requires_grad):
        make = lambda a: Tensor._make(a, xw.dtype, xw.device)
        _autograd.record(_GRU, (xw, hw, h, make(r), make(z), make(n)), {}, result)
    return result


def _gru_on_cuda(xw: Tensor, hw: Tensor, h: Tensor) -> Tensor:
    out = rnn_cell_gpu.gru_forward(xw.device.xp, xw._data, hw._data, h._data)
    result = Tensor._make(out, xw.dtype, xw.device)
    if STATE.grad_enabled and (xw.requires_grad or hw.requires_grad or h.requires_grad):
        _autograd.record(_GRU_CUDA, (xw, hw, h), {}, result)
    return result


def _cuda_gru_grad(g, out, xw, hw, h):
    if _first_order(g, h):
        grads = rnn_cell_gpu.gru_grad(g.device.xp, xw._data, hw._data, h._data, g._data)
        return tuple(Tensor._make(a, t.dtype, t.device) for a, t in zip(grads, (xw, hw, h)))
    return _gru_grad(g, out, xw, hw, h, None, None, None)[:3]


def _gru_grad(g, out, xw, hw, h, r, z, n):
    if r is not None and _first_order(g, h):
        gd, rd, zd, nd = g._data, r._data, z._data, n._data
        hidden = nd.shape[-1]
        h_n = hw._data[..., 2 * hidden:]
        dn = gd * (1 - zd) * (1 - nd * nd)
        dz = (gd * h._data - gd * nd) * zd * (1 - zd)      # the composite's two terms, summed
        dr = dn * h_n * rd * (1 - rd)
        make = Tensor._make
        return (make(np.concatenate([dr, dz, dn], axis=-1), xw.dtype, xw.device),
                make(np.concatenate([dr, dz, dn * rd], axis=-1), hw.dtype, hw.device),
                make(gd * zd, h.dtype, h.device), None, None, None)
    # create_graph: the composite's rules as differentiable ops of the inputs
    from kiln.tracer import functional as F
    x_r, x_z, x_n = F.chunk(xw, 3, -1)
    h_r, h_z, h_n = F.chunk(hw, 3, -1)
    r, z = F.sigmoid(x_r + h_r), F.sigmoid(x_z + h_z)
    n = F.tanh(x_n + r * h_n)
    dn = g * (1 - z) * (1 - n * n)
    dz = (g * h - g * n) * z * (1 - z)
    dr = dn * h_n * r * (1 - r)
    return (F.cat([dr, dz, dn], -1), F.cat([dr, dz, dn * r], -1), g * z, None, None, None)


# the rule reads the hidden projection (h_n) and h, and the saved activations
_GRU = Primitive("gru_cell", "custom", None, None, _gru_grad, 6, reads=(1, 2, 3, 4, 5),
                 doc="eager GRU cell h' = (1 - z) n + z h (never traced)")
_GRU_CUDA = Primitive("gru_cell", "custom", None, None, _cuda_gru_grad, 3, reads=(0, 1, 2),
                      doc="eager GRU cell on cuda (never traced)")
_autograd.show_inputs(_GRU, 3)         # the projections and h, not the saved activations
