"""Anomaly detection (torch.autograd.detect_anomaly) against PyTorch: a backward rule that
returns NaN raises PyTorch's error, after a warning that shows the user's forward line."""

import warnings

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch")

NAN_MAKERS = {
    "sqrt at 0": lambda lib, x: (x.sqrt() * 0).sum(),
    "div 0 by 0": lambda lib, x: (x / x).sum(),
    "pow 0.5": lambda lib, x: (x ** 0.5).sum() * 0,
    "log then mul": lambda lib, x: (lib.log(x) * x).sum(),
}


def _raised(lib, make):
    x = lib.tensor([0.0, 1.0], requires_grad=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with lib.autograd.detect_anomaly():
            loss = make(lib, x)
            with pytest.raises(RuntimeError) as err:
                loss.backward()
    return str(err.value), [str(w.message) for w in seen]


@pytest.mark.parametrize("name", sorted(NAN_MAKERS))
def test_a_nan_gradient_raises_torchs_error(name):
    make = NAN_MAKERS[name]
    got, messages = _raised(kiln, make)
    expected, _ = _raised(torch, make)
    assert got == expected
    assert any("Anomaly Detection has been enabled" in m for m in messages)
    error = next(m for m in messages if m.startswith("Error detected in"))
    assert __file__ in error and "loss = make(lib, x)" in error       # the forward's line


def test_off_or_without_nan_checks_backward_runs_as_usual():
    for lib in (kiln, torch):
        x = lib.tensor([0.0, 1.0], requires_grad=True)
        (x.sqrt() * 0).sum().backward()               # anomaly mode off: NaN gradient
        assert np.isnan(x.grad.numpy()[0])
        x.grad = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with lib.autograd.detect_anomaly(check_nan=False):
                (x.sqrt() * 0).sum().backward()
        assert np.isnan(x.grad.numpy()[0])


def test_the_flag_comes_back_and_the_decorator_scopes_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        @kiln.autograd.detect_anomaly()
        def inside():
            return kiln.is_anomaly_enabled()
        assert not kiln.is_anomaly_enabled()
        assert inside() and not kiln.is_anomaly_enabled()
        with kiln.autograd.set_detect_anomaly(True, check_nan=False):
            assert kiln.is_anomaly_enabled() and not kiln.is_anomaly_check_nan_enabled()
        assert not kiln.is_anomaly_enabled() and kiln.is_anomaly_check_nan_enabled()


def test_a_clean_backward_in_anomaly_mode_matches_plain_gradients():
    x = kiln.tensor([0.5, 2.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with kiln.autograd.detect_anomaly():
            (x.sqrt() * x).sum().backward()
    t = torch.tensor([0.5, 2.0], requires_grad=True)
    (t.sqrt() * t).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6)
