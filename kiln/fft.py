"""`kiln.fft`: the real-valued helpers of torch.fft (sample frequencies and shifts).

The transforms themselves (fft, rfft, ifft, ...) return or take complex tensors, and kiln has
no complex dtype, so they are not provided; `tests/api_exclusions.py` lists them with that
reason. fftshift/ifftshift are rolls and work on any tensor.
"""

from __future__ import annotations

from kiln.ir import dtypes as dt
from kiln.tracer import functional as F
from kiln.tracer.creation import arange as _arange


def fftfreq(n, d=1.0, *, dtype=None, device=None, requires_grad=False):
    """Sample frequencies of an n-point FFT: [0, 1, ..., n//2 - 1 (or (n-1)//2), -n//2, ...,
    -1] / (d n)."""
    kind = dtype or dt.get_default_dtype()
    i = _arange(n, dtype=dt.int64, device=device)
    k = F.where(F.lt(i, (n + 1) // 2), i, i - n)
    out = k.to(kind) * (1.0 / (n * d))         # in the result's dtype, as torch computes it
    return out.requires_grad_(True) if requires_grad else out


def rfftfreq(n, d=1.0, *, dtype=None, device=None, requires_grad=False):
    """Sample frequencies of rfft: [0, 1, ..., n//2] / (d n)."""
    kind = dtype or dt.get_default_dtype()
    out = _arange(n // 2 + 1, dtype=kind, device=device) * (1.0 / (n * d))
    return out.requires_grad_(True) if requires_grad else out


def _dims(input, dim):
    if dim is None:
        return tuple(range(input.ndim))
    return (dim,) if isinstance(dim, int) else tuple(dim)


def fftshift(input, dim=None):
    dims = _dims(input, dim)
    return F.roll(input, tuple(input.shape[d] // 2 for d in dims), dims)


def ifftshift(input, dim=None):
    dims = _dims(input, dim)
    return F.roll(input, tuple(-(input.shape[d] // 2) for d in dims), dims)
