"""Tutorial polynomial fit with nn.Sequential(Linear, Flatten(0, 1)) and a manual update."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_poly_nn_same_losses_as_torch():
    t, k = check_same_losses("poly_nn")
    np.testing.assert_allclose(k["result"], t["result"], rtol=1e-4)
