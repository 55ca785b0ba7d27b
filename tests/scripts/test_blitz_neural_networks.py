"""60-minute blitz, neural networks: LeNet, backward(gradient), manual and optim SGD."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_blitz_neural_networks_same_losses_as_torch():
    t, k = check_same_losses("blitz_neural_networks")
    assert k["shapes"] == t["shapes"]
    np.testing.assert_allclose(k["conv1_grad"], t["conv1_grad"], rtol=1e-4, atol=1e-7)
