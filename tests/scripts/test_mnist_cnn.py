"""pytorch/examples mnist/main.py pattern: conv/dropout net, log_softmax + nll_loss, Adadelta
+ StepLR, argmax test accuracy."""

from tests.scripts.harness import check_within_spread


def test_mnist_cnn_trains_like_torch():
    torch_losses, k = check_within_spread("mnist_cnn", key="test_loss")
    assert k["lr"] == [1.0 * 0.7 ** 2]          # StepLR after two epochs
