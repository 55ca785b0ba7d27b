"""pytorch/examples siamese_network: a residual CNN backbone (children()[:-1] as a Sequential,
BatchNorm in train/eval), torch.cat of the pair's features, Linear head + nn.Sigmoid + BCELoss,
apply(init_weights) with xavier_uniform_ and bias.data.fill_(0.01), a pairs Dataset drawn with
Python's random, torch.where(outputs > 0.5, 1, 0) accuracy, Adadelta + StepLR."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_siamese_matches_torch():
    t, k = check_same_losses("siamese")
    np.testing.assert_allclose(k["test_losses"], t["test_losses"], rtol=1e-5)
    assert k["accuracies"] == t["accuracies"]
    assert k["lr"] == t["lr"] == [1.0 * 0.7 ** 3]
    np.testing.assert_allclose(k["running_mean"], t["running_mean"], rtol=1e-4, atol=1e-4)
