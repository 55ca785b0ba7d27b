"""Layout rewrites: a matmul read only through a transpose computes the transposed product
itself ((a @ b).T as b.T @ a.T), with the same results; a weight gradient already comes out as
g.T @ x from matmul's gradient rule."""

import numpy as np

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
from kiln.passes.cleanup import optimize
from kiln.passes.fusion import fuse
from kiln.passes.layout import transpose_matmul_outputs, transpose_thin_products
from tests.passes.helpers import CASES, assert_same_results, traced


def _traced(fn, *args):
    (program,) = kiln.compiler.trace(fn, *args, _snapshot=True).programs
    optimized, _ = optimize(program.graph)
    return optimized, [np.array(a) for a in program.snapshots]


def _transposed_matmuls(graph) -> int:
    producers = graph.producers()
    return sum(1 for n in graph.nodes if n.op == "permute" and
               getattr(producers.get(n.inputs[0]), "op", None) == "matmul")


def test_weight_gradient_is_computed_in_the_weights_layout():
    kiln.manual_seed(0)
    model = nn.Linear(12, 5)
    x, y = kiln.randn(8, 12), kiln.randint(0, 5, (8,))

    def step(x, y):
        F.cross_entropy(model(x), y).backward()
        return model.weight.grad
    graph, inputs = _traced(step, x, y)
    # matmul's gradient rule already gives `weight.t()` the transpose of g.T @ x (so eager mode
    # gets a row-major weight gradient too); nothing is left for the pass
    assert _transposed_matmuls(graph) == 0
    node = graph.producers()[graph.outputs[0]]
    assert node.op == "matmul" and node.inputs[1] is graph.inputs[0]    # g.T @ x
    assert transpose_matmul_outputs(graph) is graph


def test_a_product_read_only_through_a_transpose_is_computed_transposed():
    graph, inputs = _traced(lambda a, b: (a @ b).T * 2, kiln.randn(3, 4), kiln.randn(4, 5))
    assert _transposed_matmuls(graph) == 1
    after = transpose_matmul_outputs(graph)
    after.verify()
    assert _transposed_matmuls(after) == 0
    assert_same_results(graph, after, inputs, rtol=1e-5)


def test_a_product_read_directly_too_keeps_its_layout():
    graph, inputs = _traced(lambda a, b: ((a @ b).T * 2, (a @ b).exp()),
                            kiln.randn(3, 4), kiln.randn(4, 5))
    assert transpose_matmul_outputs(graph) is graph


def test_corpus_keeps_its_results():
    for name in sorted(CASES):
        graph, inputs = traced(name)
        optimized, _ = optimize(graph)
        after = transpose_thin_products(transpose_matmul_outputs(optimized))
        after.verify()
        assert_same_results(graph, after, inputs, rtol=1e-5, atol=1e-5)
        assert fuse(optimized).graph.structure() == after.structure()     # fuse applies them


def test_a_thin_product_of_a_transposed_matrix_is_computed_transposed():
    # an RNN's recurrent step h @ w_hh.T, 20 rows: as (w_hh @ h.T).T, which OpenBLAS runs faster
    w = kiln.randn(512, 128)
    graph, inputs = _traced(lambda h: kiln.tanh(h @ w.T), kiln.randn(20, 128))
    after = transpose_thin_products(graph)
    after.verify()
    (mm,) = [n for n in after.nodes if n.op == "matmul"]
    assert mm.inputs[0] is graph.inputs[1] and mm.out.shape == (512, 20)     # w @ h.T
    # sums of 128 products of magnitude ~1 (results near 0 too), in BLAS's other order
    assert_same_results(graph, after, inputs, rtol=1e-5, atol=1e-5)
    # the other rewrite leaves it so, and fuse applies both
    assert transpose_matmul_outputs(after) is after
    (mm,) = [n for n in fuse(graph).graph.nodes if n.op == "matmul"]
    assert mm.out.shape == (512, 20)
    # many rows, few columns, or little work: left as it is
    # and a small inner dimension (a BiLSTM's 32x64 @ 64x256): the gate kernel would read the
    # result with a row's stride, unvectorized
    for rows, v in ((64, w), (20, kiln.randn(30, 128)), (4, kiln.randn(120, 400)),
                    (32, kiln.randn(256, 64))):
        graph, _ = _traced(lambda h: h @ v.T, kiln.randn(rows, v.shape[1]))
        assert transpose_thin_products(graph) is graph


def test_thin_products_the_backend_computes_as_they_are_stay():
    # the C backend's thin-product kernel (kiln.runtime.gemm_cpu) takes h @ w.T itself: `kept`
    # says which; the others are still computed transposed
    w, v = kiln.randn(512, 128), kiln.randn(384, 128)
    graph, inputs = _traced(lambda h: (h @ w.T).sum() + (h @ v.T).sum(), kiln.randn(20, 128))
    seen = []

    def kept(m, k, n, dtype):
        seen.append((m, k, n, dtype.name))
        return n == 512
    after = transpose_thin_products(graph, kept)
    after.verify()
    assert sorted(seen) == [(20, 128, 384, "float32"), (20, 128, 512, "float32")]
    assert sorted(n.out.shape for n in after.nodes if n.op == "matmul") == [(20, 512),
                                                                           (384, 20)]
    assert_same_results(graph, after, inputs, rtol=1e-5, atol=1e-5)
    assert sorted(n.out.shape for n in fuse(graph, thin_kept=kept).graph.nodes
                  if n.op == "matmul") == [(20, 512), (384, 20)]
    assert transpose_thin_products(graph, lambda *a: True) is graph
