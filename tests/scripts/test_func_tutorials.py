"""The torch.func tutorials (no training loop): per-sample gradients, model ensembling with a
meta-device template, Jacobians/Hessians/hvp with torch.autograd.functional beside them, and
neural tangent kernels. Every computed entry agrees with torch's; the tutorials' own checks
(allclose between two ways of computing a thing) hold in both libraries."""

import pytest

from tests.scripts.harness import check_same_values


@pytest.mark.parametrize("program, rtol, atol", [
    ("func_per_sample_grads", 1e-5, 1e-6),            # float32
    ("func_ensembling", 1e-5, 1e-6),                  # float32
    ("func_jacobians_hessians", 1e-10, 1e-12),        # float64
    ("func_neural_tangent_kernels", 1e-10, 1e-12),    # float64
])
def test_func_tutorial_same_values_as_torch(program, rtol, atol):
    t, k = check_same_values(program, rtol=rtol, atol=atol)
    checks = {name: value for name, value in k.items() if isinstance(value, bool)}
    assert checks and all(checks.values()), f"{program}: the tutorial's checks: {checks}"
