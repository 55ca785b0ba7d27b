"""Tutorial polynomial fit with torch.optim.RMSprop."""

from tests.scripts.harness import check_same_losses


def test_poly_optim_same_losses_as_torch():
    check_same_losses("poly_optim")
