"""Quickstart tutorial: Dataset/DataLoader, MLP, CrossEntropyLoss, SGD, train and test loops."""

from tests.scripts.harness import check_same_losses


def test_quickstart_same_losses_as_torch():
    t, k = check_same_losses("quickstart")
    assert abs(k["accuracy"] - t["accuracy"]) <= 1 / 64
