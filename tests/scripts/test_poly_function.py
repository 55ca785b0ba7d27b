"""Tutorial LegendrePolynomial3: a custom torch.autograd.Function with ctx.save_for_backward."""

from tests.scripts.harness import check_same_losses


def test_poly_function_same_losses_as_torch():
    check_same_losses("poly_function", compiled=False)
