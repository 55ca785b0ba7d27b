"""pytorch/examples gat: multi-head graph attention over a dense adjacency (torch.where
masking, mT, head averaging or concatenation), ELU, log_softmax + NLLLoss, Adam."""

from tests.scripts.harness import check_same_losses, check_within_spread


def test_gat_same_losses_as_torch_without_dropout():
    # the randperm split is PyTorch's too (kiln draws its numbers)
    t, k = check_same_losses("gat", dropout_p=0.0, concat=True, rtol=1e-4, atol=1e-5)
    assert k["split"] == t["split"]
    assert abs(k["test_loss"] / t["test_loss"] - 1) < 1e-4
    assert k["accuracy"] == t["accuracy"] and k["accuracy"] > 0.6


def test_gat_with_dropout_within_torch_spread():
    check_within_spread("gat", key="test_loss")
