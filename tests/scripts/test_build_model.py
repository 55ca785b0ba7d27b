"""Build-the-model tutorial: Flatten/Linear/ReLU/Sequential/Softmax and named_parameters."""

from tests.scripts.harness import check_same_values


def test_build_model_same_values_as_torch():
    check_same_values("build_model", rtol=1e-5, atol=1e-6)
