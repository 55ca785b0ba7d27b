"""`kiln.fft`: torch.fft's transforms (fft, rfft, irfft, fftn, hfft, ...), their sample
frequencies and shifts, and torch.stft / torch.istft.

The transforms are three primitives (kiln.ir.ops_complex): complex-to-complex, real-to-complex
(one-sided) and complex-to-real, computed by numpy.fft (cupy.fft on a GPU) and cast back to
the input's precision (NumPy computes complex64 in double; PyTorch's CPU FFT computes it in
single, so results agree to float32 rounding, not bit for bit). Each function here resizes
its input as `n`/`s` ask (zero-padding or trimming) and picks the primitive; their gradients
follow PyTorch's rules, including the Hermitian weights of the real transforms.
"""

from __future__ import annotations

import warnings

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.ir.ops_complex import DUAL, NORMS
from kiln.tracer import functional as F
from kiln.tracer.creation import arange as _arange
from kiln.tracer.creation import ones as _ones
from kiln.tracer.errors import op_error
from kiln.tracer.tensor import Tensor


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


# ----------------------------------------------------------------------------- transforms

def _norm(norm, name: str) -> str:
    if norm is None:
        return "backward"
    if norm not in NORMS:
        raise op_error(name, f"Invalid normalization mode: {norm!r} (expected one of "
                       f"{', '.join(map(repr, NORMS))} or None)", ValueError)
    return norm


def _as_complex(input, name: str) -> Tensor:
    """The input of a complex transform: a real tensor becomes complex (ints as the default
    float's complex type), as PyTorch promotes it."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(input).__name__}")
    if input.dtype.is_complex:
        if input.dtype is dt.complex32:
            raise op_error(name, dt.NO_COMPLEX32)
        return input
    real = input.dtype if input.dtype in (dt.float32, dt.float64) else dt.get_default_dtype()
    return P.cast(input, dtype=real.to_complex())


def _as_real(input, name: str) -> Tensor:
    """The input of a real-to-complex transform: float32 or float64 (others: the default)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(input).__name__}")
    if input.dtype.is_complex:
        raise op_error(name, f"{name} expects a real input tensor, but got {input.dtype.name}")
    if input.dtype in (dt.float32, dt.float64):
        return input
    return P.cast(input, dtype=dt.get_default_dtype())


def _fft_dims(input, dim, s, name: str) -> tuple:
    """The transformed dims, non-negative, in the caller's order (the last is the one rfftn
    halves): `dim`, else the last len(s) dims, else all of them."""
    ndim = input.ndim
    if dim is None:
        dims = tuple(range(ndim - len(s), ndim)) if s is not None else tuple(range(ndim))
    else:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise op_error(name, f"Dimension out of range (expected to be in range of "
                           f"[{-ndim}, {ndim - 1}], but got {d})", IndexError)
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise op_error(name, f"FFT dims must be unique, got {list(dims)}")
    if s is not None and len(s) != len(out):
        raise op_error(name, f"When given, dim and shape arguments must have the same length "
                       f"(s={list(s)}, dim={list(dims)})")
    if not out and ndim == 0:
        raise op_error(name, "an FFT needs at least one dimension; the input is 0-d")
    return tuple(out)


def _resize(x: Tensor, dims: tuple, sizes: tuple, name: str) -> Tensor:
    """`x` trimmed or zero-padded at the end of each of `dims` to `sizes` (PyTorch's n/s)."""
    for d, n in zip(dims, sizes):
        if n is None or n == -1:
            continue
        if n < 1:
            raise op_error(name, f"Invalid number of data points ({n}) specified")
        have = x.shape[d]
        if n < have:
            x = F.narrow(x, d, 0, n)
        elif n > have:
            pads = tuple((0, n - have) if i == d else (0, 0) for i in range(x.ndim))
            x = P.pad(x, pads=pads, value=0.0)
    return x


def _c2c(input, s, dim, norm, forward: bool, name: str) -> Tensor:
    x = _as_complex(input, name)
    dims = _fft_dims(x, dim, s, name)
    if s is not None:
        x = _resize(x, dims, tuple(s), name)
    return P.fft_c2c(x, dims=dims, norm=_norm(norm, name), forward=forward)


def _r2c(input, s, dim, norm, name: str) -> Tensor:
    x = _as_real(input, name)
    dims = _fft_dims(x, dim, s, name)
    if s is not None:
        x = _resize(x, dims, tuple(s), name)
    return P.fft_r2c(x, dims=dims, norm=_norm(norm, name))


def _c2r(input, s, dim, norm, name: str) -> Tensor:
    x = _as_complex(input, name)
    dims = _fft_dims(x, dim, s, name)
    last = dims[-1]
    n = s[-1] if s is not None and s[-1] != -1 else 2 * (x.shape[last] - 1)
    if n < 1:
        raise op_error(name, f"Invalid number of data points ({n}) specified")
    sizes = (tuple(s[:-1]) if s is not None else (None,) * (len(dims) - 1)) + (n // 2 + 1,)
    x = _resize(x, dims, sizes, name)
    return P.fft_c2r(x, dims=dims, n=n, norm=_norm(norm, name))


def _one(n):
    return None if n is None else (n,)


def fft(input, n=None, dim=-1, norm=None) -> Tensor:
    """The discrete Fourier transform along `dim` (complex result)."""
    return _c2c(input, _one(n), dim, norm, True, "fft")


def ifft(input, n=None, dim=-1, norm=None) -> Tensor:
    return _c2c(input, _one(n), dim, norm, False, "ifft")


def rfft(input, n=None, dim=-1, norm=None) -> Tensor:
    """The FFT of a real signal: the n // 2 + 1 non-negative frequencies."""
    return _r2c(input, _one(n), dim, norm, "rfft")


def irfft(input, n=None, dim=-1, norm=None) -> Tensor:
    """The inverse of rfft: a real signal of n points (default 2 * (bins - 1))."""
    return _c2r(input, _one(n), dim, norm, "irfft")


def fft2(input, s=None, dim=(-2, -1), norm=None) -> Tensor:
    return _c2c(input, s, dim, norm, True, "fft2")


def ifft2(input, s=None, dim=(-2, -1), norm=None) -> Tensor:
    return _c2c(input, s, dim, norm, False, "ifft2")


def rfft2(input, s=None, dim=(-2, -1), norm=None) -> Tensor:
    return _r2c(input, s, dim, norm, "rfft2")


def irfft2(input, s=None, dim=(-2, -1), norm=None) -> Tensor:
    return _c2r(input, s, dim, norm, "irfft2")


def fftn(input, s=None, dim=None, norm=None) -> Tensor:
    return _c2c(input, s, dim, norm, True, "fftn")


def ifftn(input, s=None, dim=None, norm=None) -> Tensor:
    return _c2c(input, s, dim, norm, False, "ifftn")


def rfftn(input, s=None, dim=None, norm=None) -> Tensor:
    return _r2c(input, s, dim, norm, "rfftn")


def irfftn(input, s=None, dim=None, norm=None) -> Tensor:
    return _c2r(input, s, dim, norm, "irfftn")


# The Hermitian transforms are the real ones seen from the other side: hfft of a one-sided
# spectrum is irfft of its conjugate with the opposite normalization (hfft is a forward
# transform: unscaled by default), and ihfft is the conjugate of rfft.
def hfft(input, n=None, dim=-1, norm=None) -> Tensor:
    """The real FFT of a Hermitian-symmetric signal given by its first half."""
    return _c2r(P.conj(_as_complex(input, "hfft")), _one(n), dim,
                DUAL[_norm(norm, "hfft")], "hfft")


def ihfft(input, n=None, dim=-1, norm=None) -> Tensor:
    """The inverse of hfft: the one-sided (Hermitian) spectrum of a real signal."""
    return P.conj(_r2c(input, _one(n), dim, DUAL[_norm(norm, "ihfft")], "ihfft"))


def hfft2(input, s=None, dim=(-2, -1), norm=None) -> Tensor:
    return _c2r(P.conj(_as_complex(input, "hfft2")), s, dim, DUAL[_norm(norm, "hfft2")],
                "hfft2")


def ihfft2(input, s=None, dim=(-2, -1), norm=None) -> Tensor:
    return P.conj(_r2c(input, s, dim, DUAL[_norm(norm, "ihfft2")], "ihfft2"))


def hfftn(input, s=None, dim=None, norm=None) -> Tensor:
    return _c2r(P.conj(_as_complex(input, "hfftn")), s, dim, DUAL[_norm(norm, "hfftn")],
                "hfftn")


def ihfftn(input, s=None, dim=None, norm=None) -> Tensor:
    return P.conj(_r2c(input, s, dim, DUAL[_norm(norm, "ihfftn")], "ihfftn"))


# ----------------------------------------------------------------------------- stft / istft

def _padded_window(window, win_length: int, n_fft: int, like: Tensor, name: str) -> Tensor:
    """The analysis window, centered in n_fft points (a rectangular one when None)."""
    if window is None:
        window = _ones(win_length, dtype=like.dtype.to_real(), device=like.device)
    if window.ndim != 1 or window.shape[0] != win_length:
        raise op_error(name, f"expected a 1D window tensor of size equal to win_length="
                       f"{win_length}, but got window with size {list(window.shape)}")
    if win_length < n_fft:
        left = (n_fft - win_length) // 2
        window = P.pad(window, pads=((left, n_fft - win_length - left),), value=0.0)
    return window


def stft(input, n_fft: int, hop_length=None, win_length=None, window=None, center=True,
         pad_mode="reflect", normalized=False, onesided=None, return_complex=None) -> Tensor:
    """The short-time Fourier transform: (freq, frames) of a (time,) signal, or (batch, freq,
    frames) of (batch, time), as torch.stft."""
    if return_complex is None:
        if not input.dtype.is_complex and (window is None or not window.dtype.is_complex):
            raise op_error("stft", "stft requires the return_complex parameter be given for "
                           "real inputs, and will further require that return_complex=True "
                           "in a future PyTorch release.")
        return_complex = True
    hop = n_fft // 4 if hop_length is None else hop_length
    win_length = n_fft if win_length is None else win_length
    if input.ndim not in (1, 2):
        raise op_error("stft", f"expected a 1D or 2D tensor, got shape {list(input.shape)}")
    if not 0 < win_length <= n_fft or hop <= 0:
        raise op_error("stft", f"expected 0 < win_length <= n_fft and hop_length > 0, got "
                       f"n_fft={n_fft}, hop_length={hop}, win_length={win_length}")
    x = input if input.ndim == 2 else F.unsqueeze(input, 0)
    if center:
        x = F.pad(x, [n_fft // 2, n_fft // 2], mode=pad_mode)
    if not 0 < n_fft <= x.shape[-1]:
        raise op_error("stft", f"expected 0 < n_fft <= {x.shape[-1]} (the padded signal's "
                       f"length), but got n_fft={n_fft}")
    frames = x.unfold(-1, n_fft, hop)                       # (batch, frames, n_fft)
    frames = frames * _padded_window(window, win_length, n_fft, x, "stft")
    norm = "ortho" if normalized else "backward"
    real = not frames.dtype.is_complex
    if onesided is None:
        onesided = real
    if onesided and not real:
        raise op_error("stft", "Cannot have onesided output if window or input is complex")
    spec = rfft(frames, norm=norm) if onesided else fft(frames, norm=norm)
    spec = F.transpose(spec, 1, 2)                          # (batch, freq, frames)
    if input.ndim == 1:
        spec = F.squeeze(spec, 0)
    if not return_complex:
        warnings.warn("stft with return_complex=False is deprecated. In a future PyTorch "
                      "release, stft will return complex tensors for all inputs, and "
                      "return_complex=False will raise an error.", UserWarning, stacklevel=2)
        return P.view_as_real(spec)
    return spec


def istft(input, n_fft: int, hop_length=None, win_length=None, window=None, center=True,
          normalized=False, onesided=None, length=None, return_complex=False) -> Tensor:
    """The inverse of stft by overlap-add, divided by the summed squared window (torch.istft)."""
    if not input.dtype.is_complex:
        raise op_error("istft", f"istft requires a complex-valued input tensor, got "
                       f"{input.dtype.name}")
    hop = n_fft // 4 if hop_length is None else hop_length
    win_length = n_fft if win_length is None else win_length
    if input.ndim not in (2, 3):
        raise op_error("istft", f"expected a tensor with 2 or 3 dimensions of complex, got "
                       f"shape {list(input.shape)}")
    spec = input if input.ndim == 3 else F.unsqueeze(input, 0)
    n_freq, n_frames = spec.shape[1], spec.shape[2]
    if onesided is None:
        onesided = n_freq != n_fft
    if onesided and n_freq != n_fft // 2 + 1:
        raise op_error("istft", f"expected the frequency dimension (3rd to the last) of the "
                       f"input tensor to match n_fft / 2 + 1 when onesided=True, but got "
                       f"{n_freq}")
    if not onesided and n_freq != n_fft:
        raise op_error("istft", f"expected the frequency dimension (3rd to the last) of the "
                       f"input tensor to match n_fft when onesided=False, but got {n_freq}")
    if onesided and return_complex:
        raise op_error("istft", "cannot have onesided output if window or input is complex")
    norm = "ortho" if normalized else "backward"
    spec = F.transpose(spec, 1, 2)                          # (batch, frames, freq)
    if return_complex:
        frames = ifft(spec, norm=norm)
    else:       # as PyTorch: a real result reads only the first n_fft/2+1 bins of a full spectrum
        frames = irfft(spec[..., :n_fft // 2 + 1], n=n_fft, norm=norm)
    win = _padded_window(window, win_length, n_fft, frames, "istft")
    frames = frames * win
    total = n_fft + hop * (n_frames - 1)

    def overlap_add(t):                   # (batch, frames, n_fft) summed into (batch, total)
        cols = F.reshape(t, (t.shape[0], 1, n_frames, 1, n_fft, 1))
        out = P.fold(cols, size=(1, total), kernel=(1, n_fft), stride=(1, hop), dilation=(1, 1))
        return F.reshape(out, (t.shape[0], total))
    y = overlap_add(frames)
    square = win * win
    envelope = overlap_add(F.expand(F.reshape(square, (1, 1, n_fft)), (1, n_frames, n_fft)))
    start = n_fft // 2 if center else 0
    end = start + length if length is not None else (total - n_fft // 2 if center else total)
    y, envelope = y[:, start:min(end, total)], envelope[:, start:min(end, total)]
    if bool((envelope.abs().min() < 1e-11).item()):
        raise op_error("istft", "window overlap add min: the summed squared window is below "
                       "1e-11 somewhere (the window fails the NOLA condition): use another "
                       "window or a smaller hop_length")
    y = y / envelope
    if end > total:
        y = P.pad(y, pads=((0, 0), (0, end - total)), value=0.0)
    return y if input.ndim == 3 else F.squeeze(y, 0)


# `x.stft(...)`, `X.istft(...)`: the torch forms as Tensor methods (as kiln.linalg binds its own)
Tensor.stft, Tensor.istft = stft, istft
