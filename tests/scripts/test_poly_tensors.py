"""Tutorial polynomial fit with tensors and hand-written gradients."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_poly_tensors_same_losses_as_torch():
    t, k = check_same_losses("poly_tensors")
    np.testing.assert_allclose(k["coefficients"], t["coefficients"], rtol=1e-4)
