"""`kiln.signal.windows` (torch.signal.windows): the window functions of spectral analysis,
with SciPy's and PyTorch's definitions, built from kiln ops (so they take `requires_grad`).

Each takes the length `M` and `sym`: True for a symmetric window (filter design), False for
a periodic one (the first M of a symmetric window of M + 1, as spectral analysis wants).
float32 or float64 (the default dtype if none is given).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

import kiln

__all__ = ["bartlett", "blackman", "cosine", "exponential", "gaussian", "general_cosine",
           "general_hamming", "hamming", "hann", "kaiser", "nuttall"]


def _checked(name: str, M: int, dtype, layout):
    if M < 0:
        raise ValueError(f"{name} requires non-negative window length, got M={M}")
    if layout is not None and layout is not kiln.strided:
        raise ValueError(f"{name} is implemented for strided tensors only, got: {layout}")
    dtype = dtype or kiln.get_default_dtype()
    if dtype not in (kiln.float32, kiln.float64):
        raise ValueError(f"{name} expects float32 or float64 dtypes, got: {dtype}")
    return dtype


def _trivial(M: int, dtype, device, requires_grad):
    """The window of length 0 (empty) or 1 (a one), or None for a longer one."""
    if M > 1:
        return None
    make = kiln.ones if M == 1 else kiln.empty
    return make((M,), dtype=dtype, device=device, requires_grad=requires_grad)


def _span(M: int, sym: bool) -> int:
    """The length of the symmetric window a periodic one is cut from, less one."""
    return M if not sym and M > 1 else M - 1


def _grid(start: float, step: float, M: int, dtype, device, requires_grad):
    return kiln.linspace(start, start + (M - 1) * step, M, dtype=dtype, device=device,
                         requires_grad=requires_grad)


def bartlett(M: int, *, sym: bool = True, dtype=None, layout=None, device=None,
             requires_grad: bool = False):
    """The triangle 1 - |2n / (N - 1) - 1|."""
    dtype = _checked("bartlett", M, dtype, layout)
    trivial = _trivial(M, dtype, device, requires_grad)
    if trivial is not None:
        return trivial
    return 1 - kiln.abs(_grid(-1, 2 / (M if not sym else M - 1), M, dtype, device,
                              requires_grad))


def cosine(M: int, *, sym: bool = True, dtype=None, layout=None, device=None,
           requires_grad: bool = False):
    """The sine lobe sin(pi (n + 1/2) / N)."""
    dtype = _checked("cosine", M, dtype, layout)
    if M == 0:
        return kiln.empty((0,), dtype=dtype, device=device, requires_grad=requires_grad)
    step = math.pi / (M + 1 if not sym and M > 1 else M)
    return kiln.sin(_grid(0.5 * step, step, M, dtype, device, requires_grad))


def exponential(M: int, *, center: float | None = None, tau: float = 1.0, sym: bool = True,
                dtype=None, layout=None, device=None, requires_grad: bool = False):
    """The Poisson window exp(-|n - center| / tau)."""
    dtype = _checked("exponential", M, dtype, layout)
    if tau <= 0:
        raise ValueError(f"Tau must be positive, got: {tau} instead.")
    if sym and center is not None:
        raise ValueError("Center must be None for symmetric windows")
    if M == 0:
        return kiln.empty((0,), dtype=dtype, device=device, requires_grad=requires_grad)
    center = _span(M, sym) / 2.0 if center is None else center
    return kiln.exp(-kiln.abs(_grid(-center / tau, 1 / tau, M, dtype, device, requires_grad)))


def gaussian(M: int, *, std: float = 1.0, sym: bool = True, dtype=None, layout=None,
             device=None, requires_grad: bool = False):
    """exp(-(n - center)^2 / (2 std^2))."""
    dtype = _checked("gaussian", M, dtype, layout)
    if std <= 0:
        raise ValueError(f"Standard deviation must be positive, got: {std} instead.")
    if M == 0:
        return kiln.empty((0,), dtype=dtype, device=device, requires_grad=requires_grad)
    scale = 1 / (std * math.sqrt(2))
    k = _grid(-_span(M, sym) / 2.0 * scale, scale, M, dtype, device, requires_grad)
    return kiln.exp(-(k ** 2))


def kaiser(M: int, *, beta: float = 12.0, sym: bool = True, dtype=None, layout=None,
           device=None, requires_grad: bool = False):
    """I0(beta sqrt(1 - (2n / (N - 1) - 1)^2)) / I0(beta)."""
    dtype = _checked("kaiser", M, dtype, layout)
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got: {beta} instead.")
    trivial = _trivial(M, dtype, device, requires_grad)
    if trivial is not None:
        return trivial
    # the grid's ends in the window's precision, as host numbers (they depend on M and beta
    # only; tensors read back would break a trace); the end not past beta, so no sqrt of a tiny
    # negative
    real = np.float32 if dtype == kiln.float32 else np.float64
    beta_r = real(beta)
    end = min(beta_r, -beta_r + real(M - 1) * (real(2.0) * beta_r / real(M if not sym else M - 1)))
    k = kiln.linspace(float(-beta_r), float(end), M, dtype=dtype, device=device,
                      requires_grad=requires_grad)
    b = kiln.tensor(beta, dtype=dtype, device=device)
    return kiln.special.i0(kiln.sqrt(b * b - k ** 2)) / kiln.special.i0(b)


def general_cosine(M: int, *, a: Iterable, sym: bool = True, dtype=None, layout=None,
                   device=None, requires_grad: bool = False):
    """sum_i (-1)^i a_i cos(2 pi i n / (N - 1)): Hann, Hamming, Blackman, Nuttall are cases."""
    dtype = _checked("general_cosine", M, dtype, layout)
    trivial = _trivial(M, dtype, device, requires_grad)
    if trivial is not None:
        return trivial
    if not isinstance(a, Iterable):
        raise TypeError("Coefficients must be a list/tuple")
    a = list(a)
    if not a:
        raise ValueError("Coefficients cannot be empty")
    k = _grid(0, 2 * math.pi / (M if not sym else M - 1), M, dtype, device, requires_grad)
    terms = kiln.tensor([(-1) ** i * w for i, w in enumerate(a)], dtype=dtype, device=device,
                        requires_grad=requires_grad)
    i = kiln.arange(len(a), dtype=dtype, device=device)
    return (terms.unsqueeze(-1) * kiln.cos(i.unsqueeze(-1) * k)).sum(0)


def general_hamming(M: int, *, alpha: float = 0.54, sym: bool = True, dtype=None, layout=None,
                    device=None, requires_grad: bool = False):
    """alpha - (1 - alpha) cos(2 pi n / (N - 1))."""
    return general_cosine(M, a=[alpha, 1.0 - alpha], sym=sym, dtype=dtype, layout=layout,
                          device=device, requires_grad=requires_grad)


def hamming(M: int, *, sym: bool = True, dtype=None, layout=None, device=None,
            requires_grad: bool = False):
    return general_hamming(M, sym=sym, dtype=dtype, layout=layout, device=device,
                           requires_grad=requires_grad)


def hann(M: int, *, sym: bool = True, dtype=None, layout=None, device=None,
         requires_grad: bool = False):
    return general_hamming(M, alpha=0.5, sym=sym, dtype=dtype, layout=layout, device=device,
                           requires_grad=requires_grad)


def blackman(M: int, *, sym: bool = True, dtype=None, layout=None, device=None,
             requires_grad: bool = False):
    return general_cosine(M, a=[0.42, 0.5, 0.08], sym=sym, dtype=dtype, layout=layout,
                          device=device, requires_grad=requires_grad)


def nuttall(M: int, *, sym: bool = True, dtype=None, layout=None, device=None,
            requires_grad: bool = False):
    return general_cosine(M, a=[0.3635819, 0.4891775, 0.1365995, 0.0106411], sym=sym,
                          dtype=dtype, layout=layout, device=device,
                          requires_grad=requires_grad)
