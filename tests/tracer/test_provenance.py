"""Provenance: traced nodes name the composite they come from (`gelu`) or, in a backward, the
forward node whose gradient they compute (`grad of %7 mul`, at that node's line); listings
print a header per group, passes and the program cache keep the scopes (issue 15)."""

import os
import re

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F
from kiln.compiler import trace
from kiln.ir.graph import Graph
from kiln.ir.interpreter import interpret
from kiln.passes.fusion import FusedKernel, fuse
from kiln.passes.pipeline import compile_passes
from kiln.program_cache import program_key
from kiln.tracer.joint import trace_joint

HERE = os.path.basename(__file__)


def _at(fn, offset: int = 1) -> str:
    """`test_provenance.py:N` of the line `offset` lines below `def fn`."""
    return f"{HERE}:{fn.__code__.co_firstlineno + offset}"


def test_gelu_nodes_carry_the_gelu_scope_and_the_users_line():
    x = kiln.randn(4, 5)

    def f(x):
        return F.gelu(x * 2.0)
    (graph,) = trace(f, x).graphs
    assert [n.op for n in graph.nodes if not n.scope] == ["mul"]
    scoped = [n for n in graph.nodes if n.scope]
    assert len(scoped) >= 5 and all(n.scope == ("gelu",) for n in scoped)
    assert all(n.loc.endswith(_at(f)) for n in graph.nodes)
    (got,), _ = interpret(graph, [x.numpy()])
    want = torch.nn.functional.gelu(torch.from_numpy(x.numpy()) * 2.0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_nested_composites_nest_their_scopes():
    logits, target = kiln.randn(6, 5), kiln.tensor([0, 4, 1, 2, 3, 0])

    def f(logits, target):
        return F.cross_entropy(logits, target)
    (graph,) = trace(f, logits, target).graphs
    scopes = {n.scope for n in graph.nodes}
    assert all(s[:1] == ("cross_entropy",) for s in scopes), scopes
    assert ("cross_entropy", "log_softmax") in scopes
    (got,), _ = interpret(graph, [logits.numpy(), target.numpy()])
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits.numpy()),
                                             torch.from_numpy(target.numpy()))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


# (name, input shape, weight shape or None, call): convolutions and pools are composites too
SPATIAL = [
    ("conv2d", (2, 3, 8, 7), (4, 3, 3, 2), lambda F, x, w: F.conv2d(x, w, padding=1, stride=2)),
    ("conv1d", (2, 3, 9), (4, 3, 3), lambda F, x, w: F.conv1d(x, w, dilation=2)),
    ("conv3d", (1, 2, 5, 4, 4), (3, 2, 2, 2, 2), lambda F, x, w: F.conv3d(x, w)),
    ("conv_transpose2d", (2, 3, 4, 4), (3, 2, 3, 3),
     lambda F, x, w: F.conv_transpose2d(x, w, stride=2)),
    ("max_pool2d", (2, 3, 8, 8), None, lambda F, x, w: F.max_pool2d(x, 3, 2, padding=1)),
    ("max_pool1d", (2, 3, 9), None, lambda F, x, w: F.max_pool1d(x, 2)),
    ("avg_pool2d", (2, 3, 8, 8), None, lambda F, x, w: F.avg_pool2d(x, 2)),
    ("adaptive_avg_pool2d", (2, 3, 7, 9), None, lambda F, x, w: F.adaptive_avg_pool2d(x, 3)),
    ("adaptive_max_pool2d", (2, 3, 7, 9), None, lambda F, x, w: F.adaptive_max_pool2d(x, 3))]


@pytest.mark.parametrize("name,shape,wshape,call", SPATIAL, ids=[c[0] for c in SPATIAL])
def test_convolution_and_pooling_nodes_carry_their_scope(name, shape, wshape, call):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in (shape, wshape) if s]
    x, w = [kiln.tensor(a) for a in arrays] + [None] * (2 - len(arrays))

    def f(x, w):
        return call(F, x, w) + 1.0
    (graph,) = trace(f, x, w).graphs
    outside = [n for n in graph.nodes if not n.scope]
    assert [n.op for n in outside] == ["add"]         # only the caller's own op is outside
    scoped = [n for n in graph.nodes if n.scope]
    assert len(scoped) >= 2 and all(n.scope[0] == name for n in scoped), \
        {n.scope for n in scoped}
    if name == "conv2d":
        assert {n.scope for n in scoped} == {("conv2d",)}
        assert "unfold" in {n.op for n in scoped} and "matmul" in {n.op for n in scoped}
    (got,), _ = interpret(graph, arrays)
    want = call(torch.nn.functional, *[torch.from_numpy(a) for a in arrays],
                *[None] * (2 - len(arrays))) + 1.0
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_the_listing_prints_a_header_per_group_and_indents_its_nodes():
    x = kiln.randn(3, 4)

    def f(x):
        h = F.gelu(x + 1.0)
        return F.log_softmax(h, dim=1)
    (graph,) = trace(f, x).graphs
    lines = str(graph).splitlines()
    gelu = lines.index(f"  # gelu @ {_at(f)}")
    soft = lines.index(f"  # log_softmax @ {_at(f, 2)}")
    assert re.match(r"  %\d+: f32\[3,4\] = add\(%x, 1\.0\)", lines[gelu - 1])
    assert gelu < soft
    for ln in lines[gelu + 1:soft] + lines[soft + 1:-1]:
        assert re.match(r"    %\d+: \w+\[[\d,]*\] = \w+\(", ln), ln       # under the header
    (got,), _ = interpret(graph, [x.numpy()])
    want = torch.log_softmax(torch.nn.functional.gelu(torch.from_numpy(x.numpy()) + 1.0), 1)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_backward_nodes_name_the_forward_node_and_point_at_its_line():
    a = kiln.randn(3, 4).requires_grad_()
    b = kiln.randn(3, 4).requires_grad_()

    def f(a, b):
        prod = a * b
        return prod.exp().sum()
    joint, info = trace_joint(f, a, b)
    mul = next(n for n in joint.nodes if n.op == "mul" and not n.scope)
    exp = next(n for n in joint.nodes if n.op == "exp" and not n.scope)
    of_mul = [n for n in joint.nodes if n.scope == (f"grad of {mul.out.ref} mul",)]
    of_exp = [n for n in joint.nodes if n.scope == (f"grad of {exp.out.ref} exp",)]
    assert of_mul and of_exp
    assert all(n.loc.endswith(_at(f)) for n in of_mul)        # `prod = a * b`, not trace_joint
    assert all(n.loc.endswith(_at(f, 2)) for n in of_exp)
    assert f"# grad of {mul.out.ref} mul @ {_at(f)}" in str(joint)
    outs, _ = interpret(joint, info.snapshots + info.tangent_values)
    ta, tb = (torch.from_numpy(t.detach().numpy()).requires_grad_() for t in (a, b))
    (ta * tb).exp().sum().backward()
    np.testing.assert_allclose(outs[1], ta.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(outs[2], tb.grad.numpy(), rtol=1e-5)


def test_a_compiled_step_points_its_backward_at_the_forward_lines(tmp_path):
    w = kiln.randn(4, 3).requires_grad_()

    def step(x):
        loss = (x @ w).tanh().sum()
        loss.backward()
        return loss.detach()
    compiled = kiln.compile(step, backend="numpy")
    x = kiln.randn(5, 4)
    compiled(x)
    (entry,) = compiled.entries.values()
    graph = entry.traced.graph
    backward = [n for n in graph.nodes if n.scope and n.scope[0].startswith("grad of ")]
    assert {n.scope[0].split()[-1] for n in backward} >= {"sum", "tanh", "matmul"}
    assert all(n.loc.endswith(_at(step)) for n in backward)   # not the backward() line
    tw = torch.from_numpy(w.detach().numpy()).requires_grad_()
    (torch.from_numpy(x.numpy()) @ tw).tanh().sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_passes_fusion_and_the_json_round_trip_keep_the_scopes():
    x = kiln.randn(8, 16).requires_grad_()
    joint, info = trace_joint(lambda x: F.gelu(x, approximate="tanh").sum(), x)
    scope_of = {n.out: n.scope for n in joint.nodes}
    program = compile_passes(joint, info)
    kept = 0
    for part in (program.forward, program.backward):
        for n in part.graph.nodes:
            if n.out in scope_of:
                assert n.scope == scope_of[n.out], n
                kept += 1
        for step in fuse(part.graph).steps:
            if isinstance(step, FusedKernel):
                inner = [n.scope for n in step.subgraph.nodes]
                assert ("gelu",) in inner or any(s and s[0].startswith("grad of") for s in inner)
    assert kept > 5
    # the gradients of gelu's nodes are grouped under `grad of gelu`
    tanh = next(n for n in joint.nodes if n.op == "tanh")
    assert tanh.scope == ("gelu",)
    assert any(n.scope == ("grad of gelu", f"grad of {tanh.out.ref} tanh") for n in joint.nodes)
    again = Graph.from_json(joint.to_json())
    assert [n.scope for n in again.nodes] == [n.scope for n in joint.nodes]
    assert str(again) == str(joint)
    # the program cache key sees the scopes (kernel comments print them)
    plain = Graph.from_json(joint.to_json())
    for n in plain.nodes:
        n.scope = ()
    assert program_key(plain, info, "c") != program_key(joint, info, "c")
    outs, _ = interpret(again, info.snapshots + info.tangent_values)
    tx = torch.from_numpy(x.detach().numpy()).requires_grad_()
    torch.nn.functional.gelu(tx, approximate="tanh").sum().backward()
    np.testing.assert_allclose(outs[1], tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["c"])
def test_kernel_comments_name_the_scope(backend):
    from kiln.runtime import c_build
    if c_build.compiler_problem() is not None:
        pytest.skip(c_build.compiler_problem())
    x = kiln.randn(8, 16)

    def f(x):
        return F.gelu(x * 0.5)
    compiled = kiln.compile(f, backend=backend)
    for _ in range(2):
        got = compiled(x)
    text = kiln.compiler.explain(compiled, x)
    source = str(text)
    # a header where the group starts, its statements' comments indented under it
    where = re.escape(_at(f))
    assert re.search(rf"// gelu @ {where}\n\s*//   %\d+ = \w+\(.*\)    \({where}\)", source)
    want = torch.nn.functional.gelu(torch.from_numpy(x.numpy()) * 0.5).numpy()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
