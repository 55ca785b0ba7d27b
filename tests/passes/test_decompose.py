"""Decomposition: batch norm's eager primitives become fusible ops with the same results."""

import numpy as np
import pytest

import kiln
import kiln.nn as nn
from kiln.passes.decompose import decomposable, decompose
from kiln.passes.pipeline import compile_passes, run_passes
from tests.passes.helpers import assert_same_results


def _bn_graph(shape, training_step: bool):
    """The traced graph of BatchNorm (running stats, affine) and, if asked, its backward."""
    kiln.manual_seed(0)
    bn = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    x = (kiln.randn(*shape) * 3 + 1).requires_grad_(training_step)
    w = kiln.randn(*shape)

    def f(x):
        y = (bn(x) * w).sum()
        if training_step:
            y.backward()
            return y.detach(), x.grad
        return y
    (program,) = kiln.compiler.trace(f, x, _snapshot=True).programs
    return program.graph, [np.array(a) for a in program.snapshots]


@pytest.mark.parametrize("shape", [(6, 4, 3, 5), (16, 3), (5, 2, 7)])
@pytest.mark.parametrize("training_step", [False, True])
def test_decomposed_batch_norm_matches_the_primitives(shape, training_step):
    graph, inputs = _bn_graph(shape, training_step)
    ops = {n.op for n in graph.nodes}
    assert "batch_norm" in ops and "batch_stats" in ops
    assert ("batch_norm_backward" in ops) == training_step
    out = decompose(graph)
    out.verify()
    assert not {n.op for n in out.nodes} & decomposable()
    # outputs, x.grad and the running statistics' write-backs
    assert_same_results(graph, out, inputs, rtol=2e-5, atol=2e-6)


def test_fused_pipelines_decompose_and_the_numpy_executor_keeps_the_primitives():
    graph, _ = _bn_graph((6, 4, 3, 5), training_step=True)
    report = run_passes(graph)
    assert report.stats[0].name == "decompose"
    assert not {n.op for n in report.optimized.nodes} & decomposable()
    # batch_norm and batch_stats read one input: CSE leaves one mean and one variance
    sums = [n for n in report.optimized.nodes if n.op == "sum" and n.inputs[0] in graph.inputs]
    assert len(sums) == 1
    kept = compile_passes(graph, fused=False).forward.graph
    assert {"batch_norm", "batch_stats", "batch_norm_backward"} <= {n.op for n in kept.nodes}


@pytest.mark.parametrize("backend", ["c", "triton"])
def test_compiled_conv_batch_norm_step_matches_eager(backend):
    def make():
        kiln.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
        opt = kiln.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            return loss.detach()
        return m, step
    kiln.manual_seed(1)
    x, y = kiln.randn(5, 3, 6, 6), kiln.tensor([0, 1, 2, 3, 1])
    eager_model, eager = make()
    model, step = make()
    compiled = kiln.compile(step, backend=backend)
    for _ in range(4):
        np.testing.assert_allclose(compiled(x, y).numpy(), eager(x, y).numpy(), rtol=1e-5)
    entry = next(e for e in compiled.entries.values() if e.program is not None)
    assert not {n.op for n in entry.graph.nodes} & decomposable()
    for (name, a), (_, b) in zip(model.state_dict().items(), eager_model.state_dict().items()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
