"""pytorch/examples mnist_forward_forward: per-layer Adam on goodness, label overlay."""

from tests.scripts.harness import check_same_losses


def test_forward_forward_same_losses_as_torch():
    # each Layer trains itself in a Python loop inside a method: nothing to wrap in compile
    t, k = check_same_losses("forward_forward", compiled=False)
    assert abs(k["train_error"] - t["train_error"]) <= 1 / 128
