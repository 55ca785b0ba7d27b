"""The custom autograd.Function tutorials: double backward (saved inputs, outputs and
intermediates, a backward made differentiable by a second Function; gradcheck and
gradgradcheck, whose random grad_outputs are drawn from torch's stream in both libraries), and
conv + batch norm fused into one Function that recomputes the conv in backward."""

from tests.scripts.harness import check_same_losses, check_same_values, no_compile_fallback


def test_double_backward_tutorial_same_values_as_torch():
    _, k = check_same_values("custom_function_double_backward", rtol=1e-12, atol=1e-12)
    v = k
    checks = [name for name in v if name.endswith("check")]
    assert len(checks) == 8 and all(v[name] is True for name in checks)
    assert v["square_grad_fn"] == "MulBackward0" and v["cube_grad_fn"] == "CubeBackwardBackward"
    assert v["hidden_grad_has_graph"] is False and v["hidden_second_raises"] is True


def test_conv_bn_fusion_tutorial_same_losses_as_torch():
    # the fused Function's hand-written backward (in-place updates of one buffer, the conv
    # recomputed) trains as torch's, and as nn.Conv2d + nn.BatchNorm2d do; the compiled step
    # traces the custom Function's forward and backward (no fallback), repeating eager's losses
    with no_compile_fallback():
        t, k = check_same_losses("custom_function_conv_bn", dropout=0.0, rtol=1e-5, atol=1e-6)
    v, tv = k["values"], t["values"]
    assert all(v[name] is True for name in ("conv_gradcheck", "bn_gradcheck",
                                            "fused_gradcheck", "once_differentiable_blocks"))
    assert v["correct"] == tv["correct"]
    for name in ("fused_test_0", "fused_test_1", "plain_test_0", "plain_test_1"):
        assert abs(v[name] / tv[name] - 1) < 1e-5, name
    assert k["losses"][7] < k["losses"][0] and k["losses"][15] < k["losses"][8]
