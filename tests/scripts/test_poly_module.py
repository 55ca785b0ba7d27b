"""Tutorial polynomial fit with a custom nn.Module of four Parameters and SGD."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_poly_module_same_losses_as_torch():
    t, k = check_same_losses("poly_module")
    assert k["string"].startswith("y = ")
    coefficients = lambda s: [float(w) for w in s.replace("y = ", "").replace(" x^3", "")
                              .replace(" x^2", "").replace(" x", "").split(" + ")]
    assert np.allclose(coefficients(k["string"]), coefficients(t["string"]), rtol=1e-4)
