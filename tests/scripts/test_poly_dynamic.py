"""Tutorial DynamicNet: Python-random depth per forward, SGD with momentum."""

from tests.scripts.harness import check_same_losses


def test_poly_dynamic_same_losses_as_torch():
    # the depth comes from Python's `random`, data-dependent per call: nothing to compile
    check_same_losses("poly_dynamic", compiled=False, rtol=1e-4)
