"""pytorch/examples super_resolution: convs + PixelShuffle, orthogonal init, MSE, Adam, PSNR."""

from tests.scripts.harness import check_same_losses


def test_super_resolution_same_losses_as_torch():
    t, k = check_same_losses("super_resolution")
    assert abs(k["psnr"] - t["psnr"]) < 1e-3
