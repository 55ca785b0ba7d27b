"""The parametrizations tutorial: custom parametrizations (Symmetric, Skew, Cayley map, matrix
exponential, pruning), caching, right_inverse assignment, removal, printouts and parameter
names; nn.utils.parametrizations.orthogonal trained with Adam; nn.utils.stateless's
functional_call. Every entry agrees with torch's (float64, rtol 1e-10); the tutorial's own
checks hold in both libraries."""

from tests.scripts.harness import check_same_values


def test_parametrizations_tutorial_same_values_as_torch():
    t, k = check_same_values("parametrizations_tutorial", rtol=1e-10, atol=1e-12)
    checks = {name: value for name, value in k.items() if isinstance(value, bool)}
    assert checks and all(checks.values()), f"the tutorial's checks: {checks}"
    assert int(k["computed_without_cache"]) == 3 and int(k["computed_with_cache"]) == 1
