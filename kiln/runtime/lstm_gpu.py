"""Eager LSTM cell steps on CuPy arrays: `kiln.codegen.lstm_triton`'s kernels, one launch each.

For each kind, shape and dtype the kernel is rendered and its launcher (`CudaKernelLauncher`)
made on first use, then reused (one per thread: a launcher keeps its last call's arguments),
so a call costs the host a table lookup, the outputs' allocations and the launch. Inputs that
are not C-contiguous (a broadcast gradient) are copied to C order first.
"""

from __future__ import annotations

import threading

from kiln.codegen.lstm_triton import DTYPES, render_lstm_kernel
from kiln.runtime.triton_launch import CudaKernelLauncher

_BY_NUMPY = {d.np_dtype: d for d in DTYPES}
_LAUNCHERS: dict = {}               # (kind, thread, shape of c, dtype) -> launcher
_LAUNCHERS_LIMIT = 1024
_INT32 = 2 ** 31 - 1


def supported(gates, c) -> bool:
    """Whether the kernels take these CuPy arrays: float32/float64, c non-empty, within 32-bit
    indexing of the gates."""
    return c.dtype in _BY_NUMPY and c.size > 0 and gates.size <= _INT32


def _launch(xp, kind: str, inputs: tuple, out_shapes: tuple):
    c = inputs[1]
    hidden = c.shape[-1]
    key = (kind, threading.get_ident(), c.shape, c.dtype)
    launcher = _LAUNCHERS.get(key)
    if launcher is None:
        if len(_LAUNCHERS) >= _LAUNCHERS_LIMIT:
            _LAUNCHERS.clear()
        launcher = _LAUNCHERS[key] = CudaKernelLauncher(render_lstm_kernel(
            kind, c.size // hidden, hidden, _BY_NUMPY[c.dtype]), tune=False)
    inputs = [a if a.flags.c_contiguous else xp.ascontiguousarray(a) for a in inputs]
    outs = [xp.empty(shape, c.dtype) for shape in out_shapes]
    launcher(inputs, outs)
    return outs


def forward(xp, gates, c):
    """(h, c') of one step, from gates (..., 4H) and c (..., H) of one dtype."""
    return _launch(xp, "forward", (gates, c), (c.shape, c.shape))


def grad_c(xp, gates, c, dc):
    """(dgates, dc_prev): the gradient of c' = sigmoid(f) c + sigmoid(i) tanh(g)."""
    return _launch(xp, "grad_c", (gates, c, xp.broadcast_to(dc, c.shape)),
                   (gates.shape, c.shape))


def grad_h(xp, gates, c_new, dh):
    """(dgates, dc'): the gradient of h = sigmoid(o) tanh(c')."""
    return _launch(xp, "grad_h", (gates, c_new, xp.broadcast_to(dh, c_new.shape)),
                   (gates.shape, c_new.shape))


__all__ = ["forward", "grad_c", "grad_h", "supported"]
