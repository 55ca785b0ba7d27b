"""The PyTorch Benchmark recipe under `import kiln as torch`: the same labels, table layouts
(numbers masked: times differ), pickled A/B results, and the same fuzzed parameters, layouts
and tensors (their batched dots agree to float32 rounding)."""

from tests.scripts.harness import check_same_values


def test_benchmark_recipe_same_layouts_and_fuzzed_inputs_as_torch():
    t, k = check_same_values("benchmark_recipe", rtol=1e-5, atol=1e-6)
    assert k["mul_sum_equals_bmm"] and k["pickle_round_trip"] and k["blocked_mean_positive"]
    assert 0 < k["fuzzed_contiguous"].sum() < 10
