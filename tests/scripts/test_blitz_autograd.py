"""60-minute blitz, autograd: external gradients, requires_grad flow, frozen parameters,
autograd.grad and retain_grad give the same values in both libraries."""

from tests.scripts.harness import check_same_values


def test_blitz_autograd_same_values_as_torch():
    t, k = check_same_values("blitz_autograd")
    assert k["check_a"] and k["check_b"]
    assert k["trainable"] == "2.weight,2.bias"
