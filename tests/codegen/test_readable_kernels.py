"""Generated kernels read like the program they come from: one naming rule, one node format,
the program's value numbers in comments, index expressions without split-and-rejoin."""

import re

import numpy as np
import pytest

import kiln
import kiln.nn.functional as F
from kiln.codegen.kernel import Const, Var, add, floordiv, linearize, mod, mul, unravel
from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph, Node, Value, format_call, kernel_name


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (5, 1, 7), (2, 2, 2, 2)])
def test_unravel_then_linearize_is_the_index(shape):
    x = Var("xindex")
    assert str(linearize(unravel(x, shape), shape)) == "xindex"


def test_index_simplifier_keeps_values():
    x = Var("x")
    cases = [
        (add(mul(floordiv(x, 4), 4), mod(x, 4)), lambda v: v),
        (add(mod(x, 4), mul(floordiv(x, 4), 4)), lambda v: v),
        (add(add(Const(5), mul(floordiv(x, 4), 4)), mod(x, 4)), lambda v: v + 5),
        (add(mul(mod(floordiv(x, 4), 3), 4), mod(x, 4)), lambda v: v % 12),
        (add(Const(0), mul(x, 1)), lambda v: v),
        (add(mul(floordiv(x, 4), 4), mod(x, 3)), lambda v: v // 4 * 4 + v % 3),   # no pair
    ]
    texts = [str(e) for e, _ in cases]
    assert texts[:5] == ["x", "x", "5 + x", "x % 12", "x"]
    assert texts[5] == "x // 4 * 4 + x % 3"
    for e, want in cases:
        for v in range(0, 200, 7):
            assert eval(str(e), {"x": v}) == want(v), str(e)


def test_one_node_format_and_one_kernel_name():
    g = Graph("g")
    out = Value(7, (4,), dt.int64)
    node = Node("arange", (), (("dtype", dt.int64), ("start", 0), ("step", 1)), out, "")
    assert format_call(node) == "arange(dtype=i64, start=0, step=1)"
    x = g.add_input((4,), dt.float32, "x")
    nodes = []
    v = x
    for op in ("exp", "tanh", "neg", "abs", "sqrt", "sin", "cos"):
        v = g.add_node(op, (v,), {}, (4,), dt.float32)
        nodes.append(g.nodes[-1])
    assert kernel_name(nodes) == "fused_exp_tanh_neg_abs_sqrt_and_2_more"


def test_c_kernels_name_and_comment_as_the_program_does():
    f = kiln.compile(lambda x, y: F.cross_entropy(x.permute(1, 0) * 2, y), backend="c")
    x, y = kiln.randn(4, 3), kiln.tensor([0, 1, 2])
    for _ in range(2):
        got = f(x, y)
    want = F.cross_entropy(x.permute(1, 0) * 2, y)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    (entry,) = f.entries.values()
    part = entry.artifact.parts[0]
    listing = {n.out.ref: format_call(n) for n in part.graph.nodes}
    names = {f"k{i}": k.name for i, k in enumerate(part.schedule.kernels)}
    assert part.kernels
    for step in part.kernels:
        # the C function is the schedule's kernel, numbered: one naming rule (the parts of
        # a kernel split around a gather, k1a and k1b, are named after their own nodes)
        if step.number in names:
            assert step.name == f"{step.number}_{names[step.number]}"
        comments = re.findall(r"//\s+(%\w+) = (.*)    \(", step.source)   # under headers
        assert comments
        for ref, call in comments:       # the program's own numbers and spelling
            assert listing[ref] == call
        assert "(, " not in step.source
