"""Spatial transformer networks tutorial: affine_grid + grid_sample behind a localization net,
LeNet after it, SGD; torch.no_grad() evaluation with summed nll_loss. `x.view(-1, 24)` of a
pooled conv output (kiln lays it out channels-last) must work as in PyTorch."""

import numpy as np

from tests.scripts.harness import check_same_losses, check_within_spread


def test_spatial_transformer_matches_torch():
    # dropout off: the two libraries draw different masks
    t, k = check_same_losses("spatial_transformer", dropout=0.0)
    np.testing.assert_allclose(k["test_losses"], t["test_losses"], rtol=1e-5)
    assert k["accuracy"] == t["accuracy"]
    np.testing.assert_allclose(k["transformed"], t["transformed"], rtol=1e-4, atol=1e-5)


def test_spatial_transformer_with_dropout_trains_like_torch():
    # Dropout2d and F.dropout(training=self.training) on: the masks differ between libraries,
    # so kiln's final test loss must lie in torch's seed spread; compiled == eager (same draws)
    check_within_spread("spatial_transformer", key="test_losses")
