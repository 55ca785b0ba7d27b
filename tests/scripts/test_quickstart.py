"""Quickstart tutorial: Dataset/DataLoader, MLP, CrossEntropyLoss, SGD, train and test loops."""

import pytest

import kiln
from tests.scripts.harness import check_same_losses


@pytest.mark.xfail(not hasattr(kiln, "accelerator"), strict=False,
                   reason="needs api-torch branch (torch.accelerator)")
def test_quickstart_same_losses_as_torch():
    t, k = check_same_losses("quickstart")
    assert abs(k["accuracy"] - t["accuracy"]) <= 1 / 64
