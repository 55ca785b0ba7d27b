"""pytorch/examples gcn: a graph convolutional network on sparse tensors (sparse_coo_tensor,
to_sparse, spmm), built the way the example builds Cora's adjacency and features."""

from tests.scripts.harness import check_same_losses, check_within_spread


def test_gcn_same_losses_as_torch_without_dropout():
    t, k = check_same_losses("gcn", dropout_p=0.0, rtol=1e-4, atol=1e-5)
    assert abs(k["test_loss"] / t["test_loss"] - 1) < 1e-4
    assert k["accuracy"] == t["accuracy"] and k["accuracy"] > 0.6


def test_gcn_with_dropout_within_torch_spread():
    check_within_spread("gcn", key="test_loss")
