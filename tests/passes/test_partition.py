"""Min-cut forward/backward partition: gradients equal eager's, and it saves no more bytes than
saving everything the backward reads (strictly fewer on GELU and layer_norm training graphs)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kiln
import kiln.nn.functional as F
from kiln.ir.interpreter import interpret
from kiln.passes.cleanup import optimize
from kiln.passes.fusion import fuse, run_schedule
from kiln.passes.partition import partition
from kiln.tracer.joint import trace_joint
from tests.passes.helpers import CASES
from tests.tracer.test_random_programs import _build, programs


def run_partitioned(forward, backward, info):
    outs, _ = interpret(forward, [a.copy() for a in info.snapshots])
    fw_outs = outs[:info.num_forward_outputs]
    grads, _ = interpret(backward, outs[info.num_forward_outputs:] + info.tangent_values)
    return fw_outs, grads


def check_partition(joint, info, rtol=1e-5, atol=1e-6):
    joint.verify()
    forward, backward, report = partition(joint, info)
    forward.verify()
    backward.verify()
    want, _ = interpret(joint, [a.copy() for a in info.snapshots + info.tangent_values])
    fw_outs, grads = run_partitioned(forward, backward, info)
    for got, ref in zip(fw_outs + grads, want):
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True)
    for got, eager in zip(grads, info.eager_grads):
        np.testing.assert_allclose(got, eager, rtol=rtol, atol=atol, equal_nan=True)
    assert report.saved_bytes <= report.save_all_bytes
    assert len(backward.inputs) == len(report.saved) + info.num_tangents
    return forward, backward, report


def _joint_case(name):
    kiln.manual_seed(0)
    fn, args = CASES[name]()
    for a in args:
        if a.dtype.is_floating_point:
            a.requires_grad_()
    try:
        joint, info = trace_joint(fn, *args)
    except Exception as e:                 # in-place writes to leaves, graph breaks
        pytest.skip(f"not differentiable as a whole: {type(e).__name__}")
    if not info.num_tangents:
        pytest.skip("no differentiable output")
    return joint, info


@pytest.mark.parametrize("name", sorted(CASES))
def test_partition_gradients_equal_eager_on_corpus(name):
    joint, info = _joint_case(name)
    forward, backward, report = check_partition(joint, info)
    optimized, _ = optimize(joint)
    f2, b2, r2 = check_partition(optimized, info)
    # the fused forward and backward programs still compute the same thing
    outs, _ = interpret(f2, [a.copy() for a in info.snapshots])
    got, _ = run_schedule(fuse(f2), [a.copy() for a in info.snapshots])
    for a, b in zip(got, outs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)
    bw_in = outs[info.num_forward_outputs:] + info.tangent_values
    want, _ = interpret(b2, bw_in)
    got, _ = run_schedule(fuse(optimize(b2)[0]), bw_in)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_corpus_has_enough_differentiable_cases():
    count = 0
    for name in CASES:
        kiln.manual_seed(0)
        fn, args = CASES[name]()
        for a in args:
            if a.dtype.is_floating_point:
                a.requires_grad_()
        try:
            _, info = trace_joint(fn, *args)
        except Exception:
            continue
        count += info.num_tangents > 0
    assert count >= 15


def _eager_grads(fn, inputs, tangent):
    out = fn(*inputs)
    return kiln.autograd.grad(out, inputs, kiln.tensor(tangent))


def gelu_training(x, w, b):
    return F.gelu(x @ w + b, approximate="tanh")


def layer_norm_training(x, g, b):
    return F.layer_norm(x, (16,), g, b)


@pytest.mark.parametrize("fn", [gelu_training, layer_norm_training])
def test_min_cut_saves_strictly_less_on_gelu_and_layer_norm(fn):
    kiln.manual_seed(0)
    if fn is gelu_training:
        inputs = [kiln.randn(8, 16), kiln.randn(16, 32), kiln.randn(32)]
    else:
        inputs = [kiln.randn(8, 16), kiln.randn(16), kiln.randn(16)]
    inputs = [t.requires_grad_() for t in inputs]
    rng = np.random.default_rng(1)
    shape = (8, 32) if fn is gelu_training else (8, 16)
    tangent = rng.standard_normal(shape).astype(np.float32)
    joint, info = trace_joint(fn, *inputs, tangents=[tangent])
    for graph in (joint, optimize(joint)[0]):
        forward, backward, report = check_partition(graph, info)
        assert report.saved_bytes < report.save_all_bytes, str(report)
    # and against a separate eager run
    _, grads = run_partitioned(forward, backward, info)
    for got, want in zip(grads, _eager_grads(fn, inputs, tangent)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    # the backward never recomputes a matmul
    assert all(n.op != "matmul" for n in report.recomputed)


def test_report_numbers_for_gelu_and_layer_norm():
    kiln.manual_seed(0)
    x = kiln.randn(8, 16).requires_grad_()
    joint, info = trace_joint(lambda a: F.gelu(a, approximate="tanh"), x)
    _, _, report = partition(joint, info)
    # GELU's backward needs only its input: save x (512 bytes), recompute the rest
    assert [v.shape for v in report.saved] == [(8, 16)]
    assert report.saved_bytes == 8 * 16 * 4
    assert report.save_all_bytes > 2 * report.saved_bytes


@settings(max_examples=30, deadline=None)
@given(programs(), st.integers(0, 2 ** 31))
def test_partition_gradients_on_random_programs(program, seed):
    shapes, steps, _ = program
    rng = np.random.default_rng(seed)
    inputs = [kiln.tensor(rng.uniform(-2, 2, s), requires_grad=True) for s in shapes]
    body = _build(shapes, steps)
    joint, info = trace_joint(lambda *xs: body(*xs), *inputs)
    if not info.num_tangents:
        return
    for graph in (joint, optimize(joint)[0]):
        forward, backward, report = check_partition(graph, info, rtol=1e-9, atol=1e-12)
        assert not any(n.op == "matmul" for n in report.recomputed)
