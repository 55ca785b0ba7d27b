"""pytorch/examples time_sequence_prediction: LSTMCells in float64 trained with LBFGS."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_time_sequence_same_losses_as_torch():
    # LBFGS reads values into Python every iteration: it runs eagerly, nothing to compile
    t, k = check_same_losses("time_sequence", compiled=False, rtol=1e-9)
    np.testing.assert_allclose(k["prediction"], t["prediction"], rtol=1e-9, atol=1e-12)
    assert k["test_loss"] == t["test_loss"] or abs(k["test_loss"] / t["test_loss"] - 1) < 1e-9
