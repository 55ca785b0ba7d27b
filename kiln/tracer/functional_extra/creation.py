"""Creation ops beyond `kiln.tracer.creation`: scalar_tensor, range, frombuffer, the window
functions, poisson, binomial, fill."""

from __future__ import annotations

import math

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer import functional as F
from kiln.tracer.creation import (_dtype, arange, check_dense_layout, default_generator,
                                  from_numpy, ones, tensor, zero_gradient)
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _as_tensor
from kiln.tracer.functional_extra.common import _full_like
from kiln.tracer.tensor import Tensor


# ----------------------------------------------------------------------------- creation

def scalar_tensor(s, *, dtype=None, layout=None, device=None, requires_grad=False):
    check_dense_layout("scalar_tensor", layout)
    return tensor(s, dtype=dtype or dt.get_default_dtype(), device=device,
                  requires_grad=requires_grad)


def range_(start=0, end=None, step=1, *, dtype=None, layout=None, device=None,
           requires_grad=False):
    """torch.range (deprecated): like arange but includes `end`."""
    check_dense_layout("range", layout)
    if end is None:
        start, end = 0, start
    count = int(math.floor((end - start) / step)) + 1
    return arange(0, count, dtype=dt.float64, device=device).mul(step).add(start).to(
        dtype or dt.get_default_dtype()).requires_grad_(requires_grad)


def frombuffer(buffer, *, dtype, count=-1, offset=0, requires_grad=False):
    kind = _dtype(dtype)
    arr = np.frombuffer(buffer, dtype=kind.np, count=count, offset=offset)
    out = from_numpy(arr)
    return out.requires_grad_(True) if requires_grad else out


def _window(name, n, periodic, fn, dtype, layout, device, requires_grad):
    check_dense_layout(f"{name}_window", layout)
    kind = dtype or dt.get_default_dtype()
    if n == 0:
        return ones(0, dtype=kind, device=device)
    if n == 1:
        return ones(1, dtype=kind, device=device)
    m = n if periodic else n - 1
    i = arange(n, dtype=dt.float64, device=device)
    out = fn(i, m).to(kind)
    return out.requires_grad_(True) if requires_grad else out


def hann_window(window_length, periodic=True, *, dtype=None, layout=None, device=None,
                requires_grad=False):
    return _window("hann", window_length, periodic,
                   lambda i, m: 0.5 - 0.5 * F.cos(i * (2 * math.pi / m)), dtype, layout, device,
                   requires_grad)


def hamming_window(window_length, periodic=True, alpha=0.54, beta=0.46, *, dtype=None,
                   layout=None, device=None, requires_grad=False):
    return _window("hamming", window_length, periodic,
                   lambda i, m: alpha - beta * F.cos(i * (2 * math.pi / m)), dtype, layout,
                   device, requires_grad)


def blackman_window(window_length, periodic=True, *, dtype=None, layout=None, device=None,
                    requires_grad=False):
    return _window("blackman", window_length, periodic,
                   lambda i, m: 0.42 - 0.5 * F.cos(i * (2 * math.pi / m))
                   + 0.08 * F.cos(i * (4 * math.pi / m)), dtype, layout, device, requires_grad)


def bartlett_window(window_length, periodic=True, *, dtype=None, layout=None, device=None,
                    requires_grad=False):
    return _window("bartlett", window_length, periodic,
                   lambda i, m: 1 - F.abs(i * (2.0 / m) - 1), dtype, layout, device,
                   requires_grad)


def kaiser_window(window_length, periodic=True, beta=12.0, *, dtype=None, layout=None,
                  device=None, requires_grad=False):
    return _window("kaiser", window_length, periodic,
                   lambda i, m: P.i0(F.sqrt(F.clamp(1 - (i * (2.0 / m) - 1) ** 2, min=0))
                                     * beta) / float(np.i0(beta)), dtype, layout, device,
                   requires_grad)


def poisson(input, generator=None):
    gen = generator or default_generator
    rng = np.random.default_rng(gen.next_seed())
    rates = input.detach()._host("poisson()")
    return _as_tensor(rng.poisson(rates).astype(input.dtype.np), input)


def binomial(count, prob, generator=None):
    gen = generator or default_generator
    rng = np.random.default_rng(gen.next_seed())
    n = count.detach()._host("binomial()")
    p = prob.detach()._host("binomial()")
    return _as_tensor(rng.binomial(n.astype(np.int64), p).astype(count.dtype.np), count)


def fill(input, value):
    """A tensor like input filled with value: its gradient flows to a tensor value (summed),
    input's is zero."""
    if isinstance(value, Tensor):
        if value.ndim:
            raise op_error("fill", f"fill only supports 0-dimension value tensor but got tensor "
                           f"with {value.ndim} dimensions")
        out = F.expand(value.to(input.dtype), tuple(input.shape)).clone()
    else:
        out = _full_like(input, value)
    return zero_gradient(out, [input])
