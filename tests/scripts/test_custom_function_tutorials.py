"""The custom autograd.Function tutorials: double backward (saved inputs, outputs and
intermediates, a backward made differentiable by a second Function; gradcheck and
gradgradcheck, whose random grad_outputs are drawn from torch's stream in both libraries)."""

from tests.scripts.harness import check_same_values


def test_double_backward_tutorial_same_values_as_torch():
    _, k = check_same_values("custom_function_double_backward", rtol=1e-12, atol=1e-12)
    v = k
    checks = [name for name in v if name.endswith("check")]
    assert len(checks) == 8 and all(v[name] is True for name in checks)
    assert v["square_grad_fn"] == "MulBackward0" and v["cube_grad_fn"] == "CubeBackwardBackward"
    assert v["hidden_grad_has_graph"] is False and v["hidden_second_raises"] is True
