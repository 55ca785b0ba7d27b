"""Eager LSTM and GRU cell steps on CuPy arrays: `kiln.codegen.rnn_cell_triton`'s kernels, one
launch each.

For each kind, shape and dtype the kernel is rendered and its launcher (`CudaKernelLauncher`)
made on first use, then reused (one per thread: a launcher keeps its last call's arguments),
so a call costs the host a table lookup, the outputs' allocations and the launch. Inputs that
are not C-contiguous (a broadcast gradient) are copied to C order first.
"""

from __future__ import annotations

import threading

from kiln.codegen.rnn_cell_triton import DTYPES, render_rnn_cell_kernel
from kiln.runtime.triton_launch import CudaKernelLauncher

_BY_NUMPY = {d.np_dtype: d for d in DTYPES}
_LAUNCHERS: dict = {}               # (kind, thread, shape of c, dtype) -> launcher
_LAUNCHERS_LIMIT = 1024
_INT32 = 2 ** 31 - 1


def supported(gates, state) -> bool:
    """Whether the kernels take these CuPy arrays: float32/float64, the state (c or h)
    non-empty, within 32-bit indexing of the gates."""
    return state.dtype in _BY_NUMPY and state.size > 0 and gates.size <= _INT32


def _launch(xp, kind: str, inputs: tuple, out_shapes: tuple, c):
    """Launch `kind` on `inputs`; `c` is the (..., H) state that sizes the kernel."""
    hidden = c.shape[-1]
    key = (kind, threading.get_ident(), c.shape, c.dtype)
    launcher = _LAUNCHERS.get(key)
    if launcher is None:
        if len(_LAUNCHERS) >= _LAUNCHERS_LIMIT:
            _LAUNCHERS.clear()
        launcher = _LAUNCHERS[key] = CudaKernelLauncher(render_rnn_cell_kernel(
            kind, c.size // hidden, hidden, _BY_NUMPY[c.dtype]), tune=False)
    inputs = [a if a.flags.c_contiguous else xp.ascontiguousarray(a) for a in inputs]
    outs = [xp.empty(shape, c.dtype) for shape in out_shapes]
    launcher(inputs, outs)
    return outs


def forward(xp, gates, c):
    """(h, c') of one step, from gates (..., 4H) and c (..., H) of one dtype."""
    return _launch(xp, "forward", (gates, c), (c.shape, c.shape), c)


def grad_c(xp, gates, c, dc):
    """(dgates, dc_prev): the gradient of c' = sigmoid(f) c + sigmoid(i) tanh(g)."""
    return _launch(xp, "grad_c", (gates, c, xp.broadcast_to(dc, c.shape)),
                   (gates.shape, c.shape), c)


def grad_h(xp, gates, c_new, dh):
    """(dgates, dc'): the gradient of h = sigmoid(o) tanh(c')."""
    return _launch(xp, "grad_h", (gates, c_new, xp.broadcast_to(dh, c_new.shape)),
                   (gates.shape, c_new.shape), c_new)


def gru_forward(xp, xw, hw, h):
    """h' of a GRU step from xw, hw (..., 3H) and h (..., H) of one dtype."""
    (out,) = _launch(xp, "gru_forward", (xw, hw, h), (h.shape,), h)
    return out


def gru_grad(xp, xw, hw, h, dout):
    """(dxw, dhw, dh) of a GRU step from the gradient of h'."""
    return _launch(xp, "gru_grad", (xw, hw, h, xp.broadcast_to(dout, h.shape)),
                   (xw.shape, hw.shape, h.shape), h)


__all__ = ["forward", "grad_c", "grad_h", "gru_forward", "gru_grad", "supported"]
