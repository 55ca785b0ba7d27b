"""The graph rewrites that merge sums and slices (`pipeline.STEPS` between cleanup and fuse)
keep every corpus program's results, each applied alone to its cleaned-up graph."""

import pytest

from kiln.passes.cleanup import optimize
from kiln.passes.matmul_sums import merge_matmul_sums
from kiln.passes.pad_sums import concatenate_padded_sums
from kiln.passes.slice_sinking import sink_slices
from kiln.passes.stack_reshapes import concatenate_before_reshapes
from tests.passes.helpers import CASES, assert_same_results, traced

PASSES = [sink_slices, concatenate_before_reshapes, concatenate_padded_sums, merge_matmul_sums]


@pytest.mark.parametrize("rewrite", PASSES, ids=lambda p: p.__name__)
def test_corpus_keeps_its_results(rewrite):
    for name in sorted(CASES):
        graph, inputs = traced(name)
        optimized, _ = optimize(graph)
        after = rewrite(optimized)
        after.verify()
        assert_same_results(graph, after, inputs, rtol=1e-5, atol=1e-5)
