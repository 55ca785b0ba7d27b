"""PyTorch's "Fusing Convolution and Batch Norm using Custom Function" tutorial: hand-written
backwards (conv via conv2d/conv_transpose2d and via torch.nn.grad, batch norm, the fused
Function) pass gradcheck in kiln as in torch, and a net of fused layers trains with torch's
losses; its compiled step (custom Functions inside) repeats the eager losses."""

from tests.scripts.harness import check_same_losses


def test_fused_conv_bn_functions_check_and_train_as_torch():
    t, k = check_same_losses("fuse_conv_bn", rtol=1e-5)
    assert k["checks"] == t["checks"] == [True, True, True, True]
