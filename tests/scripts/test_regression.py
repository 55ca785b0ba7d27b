"""pytorch/examples regression/main.py: polynomial features, Linear, smooth_l1, param.data SGD."""

from tests.scripts.harness import check_same_losses


def test_regression_same_losses_as_torch():
    # ~200 float32 steps: rounding differences grow to ~1e-5 relative by the end
    t, k = check_same_losses("regression", rtol=2e-4, atol=1e-6)
    assert k["losses"][-1] < 1e-3 and len(k["losses"]) == len(t["losses"])
    assert k["learned"] == t["learned"]
