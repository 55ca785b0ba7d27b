"""pytorch/examples dcgan: generator and discriminator steps, weights_init via apply, BCELoss,
Adam(betas=(0.5, 0.999)); from torch's weights and the same noise, the same D and G losses."""

from tests.scripts.harness import check_same_losses


def test_dcgan_same_losses_as_torch():
    check_same_losses("dcgan", rtol=1e-4, atol=1e-6)
