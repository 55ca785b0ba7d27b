"""Tutorial polynomial fit with autograd and an update under no_grad."""

from tests.scripts.harness import check_same_losses


def test_poly_autograd_same_losses_as_torch():
    check_same_losses("poly_autograd", compiled=False)   # the update is inline: nothing to wrap
