"""kiln.signal.windows against torch.signal.windows: every window, symmetric and periodic,
lengths 0..9 and a long one, float32 and float64, with their parameters; and the errors."""

import numpy as np
import pytest
import torch

import kiln

WINDOWS = [("bartlett", {}), ("blackman", {}), ("cosine", {}), ("hamming", {}), ("hann", {}),
           ("nuttall", {}), ("exponential", {"tau": 2.5}), ("gaussian", {"std": 0.7}),
           ("kaiser", {"beta": 5.0}), ("kaiser", {}), ("general_hamming", {"alpha": 0.6}),
           ("general_cosine", {"a": [0.5, 0.3, 0.2]})]


@pytest.mark.parametrize("name,kwargs", WINDOWS, ids=[f"{n}{len(k)}" for n, k in WINDOWS])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_window_matches_torch(name, kwargs, dtype):
    for M in list(range(10)) + [64]:
        for sym in (True, False):
            k = getattr(kiln.signal.windows, name)(M, sym=sym, dtype=getattr(kiln, dtype),
                                                    **kwargs)
            t = getattr(torch.signal.windows, name)(M, sym=sym, dtype=getattr(torch, dtype),
                                                     **kwargs)
            assert k.dtype.name == dtype and tuple(k.shape) == tuple(t.shape)
            tol = 1e-6 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(k.numpy(), t.numpy(), rtol=tol, atol=tol,
                                       err_msg=f"{name} M={M} sym={sym}")


def test_exponential_center_and_errors_as_torch():
    np.testing.assert_allclose(
        kiln.signal.windows.exponential(7, center=2.0, sym=False).numpy(),
        torch.signal.windows.exponential(7, center=2.0, sym=False).numpy(), rtol=1e-6)
    for lib in (torch, kiln):
        w = lib.signal.windows
        for call, match in ((lambda: w.hann(-1), "non-negative"),
                            (lambda: w.hann(4, dtype=lib.int64), "float32 or float64"),
                            (lambda: w.gaussian(4, std=0), "positive"),
                            (lambda: w.exponential(4, center=1.0), "Center must be None"),
                            (lambda: w.kaiser(4, beta=-1.0), "non-negative"),
                            (lambda: w.general_cosine(4, a=[]), "cannot be empty")):
            with pytest.raises(ValueError, match=match):
                call()
    assert kiln.signal.windows.hann(5, requires_grad=True).requires_grad
