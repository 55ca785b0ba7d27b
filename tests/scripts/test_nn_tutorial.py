""""What is torch.nn really?": hand-written log_softmax/nll with x[range(n), y] indexing and a
manual update, then cross_entropy + nn.Module + optim + DataLoader, then a Sequential CNN with
Lambda layers; same losses as torch from torch's weights."""

from tests.scripts.harness import check_same_losses


def test_nn_tutorial_same_losses_as_torch():
    # the loops call .item() inside loss_batch every step: nothing worth compiling
    t, k = check_same_losses("nn_tutorial", compiled=False)
    assert k["scratch_accuracy"] == t["scratch_accuracy"]
    assert abs(k["cnn_val"] / t["cnn_val"] - 1) < 1e-5
