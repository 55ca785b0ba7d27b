"""kiln.fft's transforms, torch.stft/istft and a Fourier-layer model against torch 2.13's CPU:
values, dtypes and gradients (through a random real loss of every output part), for every
transform with the n/s, dim and norm arguments."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.parity import random_array

# (complex dtype, its real dtype, tolerance): numpy.fft computes complex64 in double and kiln
# rounds the result; PyTorch's CPU FFT computes it in single precision
PRECISIONS = {"c64": (np.complex64, np.float32, 1e-6), "c128": (np.complex128, np.float64, 1e-13)}

C2C = [("fft", {}), ("fft", dict(n=4, dim=0)), ("fft", dict(n=9, norm="ortho")),
       ("ifft", dict(norm="forward")), ("ifft", dict(n=3, dim=-2)),
       ("hfft", {}), ("hfft", dict(n=7, norm="ortho")), ("hfft", dict(n=4, dim=0, norm="forward")),
       ("irfft", {}), ("irfft", dict(n=5)), ("irfft", dict(n=11, norm="ortho", dim=0)),
       ("fft2", {}), ("fft2", dict(s=(3, 8), norm="ortho")), ("ifft2", dict(dim=(0, 2))),
       ("fftn", {}), ("fftn", dict(s=(5, 5), dim=(2, 0), norm="forward")), ("ifftn", dict(s=(7,))),
       ("irfft2", {}), ("irfft2", dict(s=(3, 9), norm="forward")), ("irfftn", dict(dim=(0, 1))),
       ("irfftn", dict(s=(4, 4, 6), norm="ortho")), ("hfft2", {}), ("hfftn", dict(s=(2, 5)))]
R2C = [("rfft", {}), ("rfft", dict(n=4, dim=0)), ("rfft", dict(n=9, norm="forward")),
       ("ihfft", {}), ("ihfft", dict(n=5, norm="ortho")), ("rfft2", {}),
       ("rfft2", dict(s=(3, 8), norm="ortho")), ("rfftn", dict(dim=(2, 0))),
       ("rfftn", dict(s=(5, 4), norm="forward")), ("ihfft2", {}), ("ihfftn", dict(dim=(0, 1))),
       ("fft", {}), ("ifft2", dict(norm="ortho"))]          # real input to complex transforms


def _loss_weights(shape, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, size=tuple(shape) + (2,))


def _run(lib, name, x, kw):
    """The transform's output and the gradient of a random real loss of it."""
    t = lib.tensor(x, requires_grad=True)
    out = getattr(lib.fft, name)(t, **kw)
    w = _loss_weights(out.shape)
    if out.is_complex():
        part = lib.view_as_real(out.resolve_conj())
        loss = (part * lib.tensor(w, dtype=part.dtype)).sum()
    else:
        loss = (out * lib.tensor(w[..., 0], dtype=out.dtype)).sum()
    loss.backward()
    return out.detach().resolve_conj().numpy(), t.grad.resolve_conj().numpy(), out.dtype


def _compare(name, x, kw, tol):
    o_t, g_t, d_t = _run(torch, name, x, kw)
    o_k, g_k, d_k = _run(kiln, name, x, kw)
    assert d_k.name == str(d_t).replace("torch.", "")
    assert o_k.shape == o_t.shape and g_k.shape == g_t.shape
    np.testing.assert_allclose(o_k, o_t, rtol=tol * 10, atol=tol, err_msg="values")
    np.testing.assert_allclose(g_k, g_t, rtol=tol * 10, atol=tol, err_msg="gradients")


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("name,kw", C2C, ids=[f"{n}-{i}" for i, (n, _) in enumerate(C2C)])
def test_complex_input_transforms_match_torch(name, kw, precision):
    cdtype, _, tol = PRECISIONS[precision]
    x = random_array((4, 6, 5), cdtype, rng=np.random.default_rng(0))
    _compare(name, x, kw, tol)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("name,kw", R2C, ids=[f"{n}-{i}" for i, (n, _) in enumerate(R2C)])
def test_real_input_transforms_match_torch(name, kw, precision):
    _, rdtype, tol = PRECISIONS[precision]
    x = random_array((4, 6, 5), rdtype, rng=np.random.default_rng(0))
    _compare(name, x, kw, tol)


def test_transforms_invert_each_other_and_refuse_bad_arguments():
    x = kiln.randn(3, 8, dtype=kiln.float64)
    for norm in (None, "ortho", "forward"):
        for back in (kiln.fft.irfft(kiln.fft.rfft(x, norm=norm), n=8, norm=norm),
                     kiln.fft.ifft(kiln.fft.fft(x, norm=norm), norm=norm).real,
                     kiln.fft.hfft(kiln.fft.ihfft(x, norm=norm), n=8, norm=norm),
                     kiln.fft.irfftn(kiln.fft.rfftn(x, norm=norm), s=(3, 8), norm=norm)):
            np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-12)
    assert kiln.fft.fft(kiln.arange(4)).dtype is kiln.complex64     # ints: the default's complex
    with pytest.raises(ValueError, match="Invalid normalization mode"):
        kiln.fft.fft(x, norm="unit")
    with pytest.raises(RuntimeError, match="real input"):
        kiln.fft.rfft(kiln.fft.fft(x))
    with pytest.raises(IndexError, match="out of range"):
        kiln.fft.fft(x, dim=2)
    with pytest.raises(RuntimeError, match="same length"):
        kiln.fft.fftn(x, s=(2, 2), dim=(0,))


# ----------------------------------------------------------------------------- stft / istft

STFT = [dict(n_fft=16), dict(n_fft=16, hop_length=5, win_length=10, window="hann"),
        dict(n_fft=12, window="hann", normalized=True, pad_mode="constant"),
        dict(n_fft=16, onesided=False, window="hamming"),
        dict(n_fft=8, hop_length=3, window="hann", center=False)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", STFT, ids=[str(i) for i in range(len(STFT))])
def test_stft_and_istft_match_torch(kw, dtype):
    x = random_array((2, 50), dtype, rng=np.random.default_rng(3))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    results = []
    for lib in (torch, kiln):
        args = dict(kw)
        if "window" in args:
            size = args.get("win_length", args["n_fft"])
            args["window"] = getattr(lib, args["window"] + "_window")(
                size, dtype=getattr(lib, np.dtype(dtype).name))
        t = lib.tensor(x, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # torch's rectangular-window advice
            spec = lib.stft(t, return_complex=True, **args)
            loss = (spec.abs() ** 2).sum() + spec.angle().sin().sum()
            back = None
            if args.get("center", True):        # a hann window without centering fails NOLA
                inv = {k: v for k, v in args.items() if k != "pad_mode"}
                back = lib.istft(spec, length=50, **inv)
                loss = loss + (back * back * lib.tensor(x)).sum()
        loss.backward()
        results.append([spec.detach().resolve_conj().numpy(), t.grad.numpy()] +
                       ([back.detach().numpy()] if back is not None else []))
    for k, t in zip(results[1], results[0]):
        assert k.shape == t.shape and k.dtype == t.dtype
        np.testing.assert_allclose(k, t, rtol=tol, atol=tol)
    if len(results[1]) == 3:                    # and istft inverts stft
        np.testing.assert_allclose(results[1][2], x, rtol=tol, atol=tol)


def test_stft_return_complex_as_in_torch_2_13():
    x = kiln.randn(40)
    with pytest.raises(RuntimeError, match="requires the return_complex parameter"):
        kiln.stft(x, 8)
    with pytest.warns(UserWarning, match="return_complex=False is deprecated"):
        pairs = kiln.stft(x, 8, return_complex=False)
    t = torch.stft(torch.tensor(x.numpy()), 8, return_complex=True)
    assert tuple(pairs.shape) == tuple(t.shape) + (2,) and pairs.dtype is kiln.float32
    np.testing.assert_allclose(pairs.numpy(), torch.view_as_real(t).numpy(), atol=1e-5)
    spec = x.stft(8, window=kiln.hann_window(8), return_complex=True)     # the Tensor methods
    np.testing.assert_allclose(spec.istft(8, window=kiln.hann_window(8), length=40).numpy(),
                               x.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- Fourier layer

def _fourier_model(lib, weights: dict, modes: int):
    """An FNO-style spectral convolution as users write it: rfft2, a complex weight on the
    lowest modes (einsum), irfft2, then a pointwise linear layer."""
    nn = lib.nn

    class SpectralConv2d(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.cout = cout
            self.weight = nn.Parameter(lib.tensor(weights["spectral"]))
            self.mix = nn.Conv2d(cin, cout, 1)
            with lib.no_grad():
                self.mix.weight.copy_(lib.tensor(weights["mix.weight"]))
                self.mix.bias.copy_(lib.tensor(weights["mix.bias"]))

        def forward(self, x):
            b, _, h, w = x.shape
            x_ft = lib.fft.rfft2(x)
            out_ft = lib.zeros(b, self.cout, h, w // 2 + 1, dtype=lib.cfloat)
            out_ft[:, :, :modes, :modes] = lib.einsum(
                "bixy,ioxy->boxy", x_ft[:, :, :modes, :modes], self.weight)
            return lib.fft.irfft2(out_ft, s=(h, w)) + self.mix(x)

    return SpectralConv2d(weights["mix.weight"].shape[1], weights["mix.weight"].shape[0])


def test_fourier_layer_trains_as_in_torch():
    cin, cout, modes = 2, 3, 3
    rng = np.random.default_rng(11)
    spectral = (rng.normal(size=(cin, cout, modes, modes)) +
                1j * rng.normal(size=(cin, cout, modes, modes))) / (cin * cout)
    weights = {"spectral": spectral.astype(np.complex64),
               "mix.weight": rng.normal(0, 0.3, (cout, cin, 1, 1)).astype(np.float32),
               "mix.bias": np.zeros(cout, np.float32)}
    x = rng.normal(size=(4, cin, 8, 8)).astype(np.float32)
    y = rng.normal(size=(4, cout, 8, 8)).astype(np.float32)
    losses = {}
    for lib in (torch, kiln):
        model = _fourier_model(lib, weights, modes)
        assert model.weight.dtype == lib.complex64
        opt = lib.optim.Adam(model.parameters(), lr=1e-2)
        out = []
        for _ in range(5):
            opt.zero_grad()
            loss = ((model(lib.tensor(x)) - lib.tensor(y)) ** 2).mean()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[lib.__name__] = out
    np.testing.assert_allclose(losses["kiln"], losses["torch"], rtol=1e-5)
    assert losses["kiln"][-1] < losses["kiln"][0]
