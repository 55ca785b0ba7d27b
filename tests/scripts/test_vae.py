"""pytorch/examples vae: reparameterization with randn_like, BCE(sum) + KLD, Adam. The noise
differs between libraries, so kiln's final epoch loss must be within torch's seed spread."""

from tests.scripts.harness import check_within_spread


def test_vae_trains_like_torch():
    _, k = check_within_spread("vae")
    assert k["sample_shape"] == (8, 1, 8, 8)
