"""Fusion: schedules run to the interpreter's results, keep the kernel contract, and fuse the
composites (GELU, softmax, layer_norm, cross-entropy, Adam) into the promised kernel counts."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
from kiln.ir.interpreter import interpret
from kiln.ir.ops import CREATION, ELEMENTWISE, MOVEMENT, REDUCE
from kiln.passes.cleanup import optimize
from kiln.passes.fusion import CHEAP_BROADCASTS, FusedKernel, fuse, is_fusible, run_schedule
from tests.passes.helpers import CASES, trace_random_program, traced
from tests.tracer.test_random_programs import programs


def check_schedule(schedule, inputs, rtol=1e-6, atol=1e-6):
    """The schedule equals the interpreter and every kernel keeps the codegen contract."""
    graph = schedule.graph
    want_out, want_mut = interpret(graph, [a.copy() for a in inputs])
    got_out, got_mut = run_schedule(schedule, [a.copy() for a in inputs])
    for got, want in zip(got_out + got_mut, want_out + want_mut):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    computed: dict = {}
    for step in schedule.steps:
        if isinstance(step, FusedKernel):
            check_kernel(step)
            for n in step.nodes:
                computed[n.out] = computed.get(n.out, 0) + 1
        else:
            assert not is_fusible(step.node, gathers=False)
            computed[step.node.out] = computed.get(step.node.out, 0) + 1
    for n in graph.nodes:
        # nothing but views, broadcasts of smaller values (a pool's window mask from one
        # byte per output) and cheap functions of one value (`1 - s`) is computed twice; a
        # reduction or a matmul never is
        if n.prim.kind in (MOVEMENT, CREATION):
            assert computed.get(n.out, 0) <= 1
        elif n.prim.kind == ELEMENTWISE and (
                all(math.prod(v.shape) < math.prod(n.out.shape) for v in n.value_inputs) or
                (n.op in CHEAP_BROADCASTS and len(set(n.value_inputs)) == 1)):
            assert computed.get(n.out, 0) >= 1, n.op
        else:
            assert computed.get(n.out) == 1, n.op


def check_kernel(kernel):
    sub = kernel.subgraph
    sub.verify()
    assert [(v.shape, v.dtype) for v in sub.inputs] == [(v.shape, v.dtype)
                                                         for v in kernel.inputs]
    assert [(v.shape, v.dtype) for v in sub.outputs] == [(v.shape, v.dtype)
                                                          for v in kernel.outputs]
    loads = set(sub.inputs)
    for n in sub.nodes:
        assert is_fusible(n), n.op
        if n.op == "take":
            assert n.inputs[0] in loads          # a gather reads a buffer
        if n.prim.kind in (MOVEMENT, CREATION) and all(v in loads for v in n.value_inputs):
            loads.add(n.out)                      # index arithmetic on a load
    keys = {(n.inputs[0].shape, tuple(sorted(n.attr_dict.get("axes", (n.attr_dict.get("axis"),)))))
            for n in sub.nodes if n.prim.kind == REDUCE}
    assert len(keys) <= 1
    sizes = {math.prod(n.out.shape) for n in sub.nodes if n.out not in loads}
    if keys:
        ((shape, axes),) = keys
        d = math.prod(shape)
        sizes -= {d, math.prod(s for i, s in enumerate(shape) if i not in axes)}
        assert not sizes
    else:
        assert len(sizes) <= 1


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_equals_interpreter_on_corpus(name):
    graph, inputs = traced(name)
    check_schedule(fuse(graph), inputs)
    optimized, _ = optimize(graph)
    schedule = fuse(optimized)
    check_schedule(schedule, inputs)
    check_schedule(fuse(optimized, horizontal=False, gathers=False), inputs)
    assert len(schedule.kernels) <= len(optimized.nodes)


@settings(max_examples=40, deadline=None)
@given(programs(), st.integers(0, 2 ** 31))
def test_schedule_equals_interpreter_on_random_programs(program, seed):
    graph, inputs = trace_random_program(program, seed)
    optimized, _ = optimize(graph)
    check_schedule(fuse(optimized), inputs, rtol=1e-9, atol=1e-12)


def _schedule(fn, *args):
    (program,) = kiln.compiler.trace(fn, *args, _snapshot=True).programs
    optimized, _ = optimize(program.graph)
    schedule = fuse(optimized)
    check_schedule(schedule, [np.array(a) for a in program.snapshots])
    return schedule


def test_gelu_tanh_is_one_kernel():
    s = _schedule(lambda x: F.gelu(x, approximate="tanh"), kiln.randn(8, 16))
    assert len(s.kernels) == 1 and not s.externs
    assert s.kernels[0].name.startswith("fused_mul_add_tanh")


def test_softmax_is_one_kernel():
    s = _schedule(lambda x: F.softmax(x, -1), kiln.randn(8, 16))
    assert len(s.steps) == 1
    assert s.kernels[0].name == "fused_max_sub_exp_sum_div"


def test_layer_norm_is_one_kernel():
    s = _schedule(lambda x, w, b: F.layer_norm(x, (16,), w, b), kiln.randn(8, 16),
                  kiln.randn(16), kiln.randn(16))
    assert len(s.steps) == 1


def test_a_permute_after_a_row_reduction_gets_its_own_kernel():
    # a transformer layer's layer norm, then the (batch, seq) -> (seq, batch) transpose of
    # nn.MultiheadAttention: the permute reads the normalized rows out of order, which the
    # row-wise kernel cannot; as one kernel the group failed to lower and ran on NumPy
    from kiln.codegen.kernel import lower
    x, w, b = kiln.randn(4, 6, 16), kiln.randn(16), kiln.randn(16)
    s = _schedule(lambda x, w, b: F.layer_norm(x, (16,), w, b).transpose(0, 1).exp(), x, w, b)
    assert len(s.kernels) == 2
    norm, copy = s.kernels
    assert any(n.op == "sum" for n in norm.nodes) and not any(n.op == "permute" for n in norm.nodes)
    assert [n.op for n in copy.nodes] == ["permute", "exp"]
    for k in s.kernels:
        lower(k.subgraph)           # raises LoweringError for a permute inside the row kernel
    check_schedule(s, [x.numpy(), w.numpy(), b.numpy()], rtol=1e-5, atol=1e-6)
    # a permute before the reduction is index arithmetic in the same kernel, as before
    s = _schedule(lambda x: F.softmax(x.transpose(0, 1).exp(), -1), x)
    assert len(s.kernels) == 1
    lower(s.kernels[0].subgraph)


@pytest.mark.parametrize("via", ["cross_entropy", "nll_take", "one_hot"])
def test_cross_entropy_is_at_most_two_kernels(via):
    x, y = kiln.randn(8, 16), kiln.tensor([1, 2, 3, 4, 5, 6, 7, 0])
    fns = {"cross_entropy": lambda a, t: F.cross_entropy(a, t),
           "nll_take": lambda a, t: F.nll_loss(F.log_softmax(a, 1), t),
           "one_hot": lambda a, t: -(F.log_softmax(a, 1) * F.one_hot(t, 16)).sum(1).mean()}
    s = _schedule(fns[via], x, y)
    # the only extern is the class targets' bounds check (kiln.ir.ops check_index)
    assert len(s.kernels) <= 2 and all(e.node.op == "check_index" for e in s.externs)


def test_gathers_can_stay_externs():
    x, y = kiln.randn(8, 16), kiln.tensor([1, 2, 3, 4, 5, 6, 7, 0])
    (graph,) = kiln.compiler.trace(lambda a, t: F.cross_entropy(a, t), x, y).graphs
    s = fuse(optimize(graph)[0], gathers=False)
    assert [e.name for e in s.externs] == ["check_index", "take"]
    check_schedule(s, [x.numpy(), y.numpy()])


def test_adam_step_over_many_parameters_is_a_few_kernels():
    kiln.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(6)])
    params = list(model.parameters())
    opt = kiln.optim.Adam(params, lr=1e-3)
    for p in params:
        p.grad = kiln.randn(*p.shape)
    opt.step()                    # creates the optimizer state; trace the next step
    (program,) = kiln.compiler.trace(lambda: opt.step(), _snapshot=True).programs
    optimized, _ = optimize(program.graph)
    s = fuse(optimized)
    check_schedule(s, [np.array(a) for a in program.snapshots])
    assert len(params) == 12
    # one kernel for the scalar step counters, one per distinct parameter size
    assert len(s.kernels) == 3
    assert len(fuse(optimized, horizontal=False).kernels) >= len(params)


def test_matmul_stays_extern_with_its_epilogue_fused_after_it():
    w, b = kiln.randn(16, 8), kiln.randn(8)
    s = _schedule(lambda x: F.gelu(x @ w + b, approximate="tanh"), kiln.randn(4, 16))
    assert [type(step).__name__ for step in s.steps] == ["ExternStep", "FusedKernel"]
    assert s.externs[0].name == "matmul"
    assert s.kernels[0].inputs[0] is s.externs[0].node.out


def test_groups_colour_the_dot_picture():
    s = _schedule(lambda x: (F.softmax(x, -1) @ x).tanh(), kiln.randn(4, 4))
    groups = s.groups()
    dot = s.graph.to_dot(groups=groups)
    assert len(set(groups.values())) == len(s.kernels) == 2
    assert dot.count('fillcolor="#8dd3c7"') >= 5        # the softmax kernel's colour
    assert "k0 fused_max_sub_exp_sum_div" in str(s)


def test_cheap_functions_of_a_crossing_value_are_computed_again_where_read():
    # an LSTM-like gate: s = sigmoid(z) and t = tanh(z) are read after a matmul (in another
    # kernel), and so are their gradients' factors 1 - s and 1 - t * t; the first kernel
    # stores s and t alone, the second computes the factors from them
    w = kiln.randn(16, 16)

    def fn(z):
        s, t = kiln.sigmoid(z), kiln.tanh(z)
        later = ((s + t) @ w).exp()
        return later * s * (1 - s) + later * (1 - t * t) + t
    z = kiln.randn(4, 16)
    s = _schedule(fn, z)
    first, second = s.kernels
    assert sorted(n.op for n in first.subgraph.nodes) == ["add", "sigmoid", "tanh"]
    assert len(first.outputs) == 3                      # s + t, s, t
    assert sum(n.op == "sub" for n in second.subgraph.nodes) == 2
    assert len(second.inputs) == 3                      # s, t and the product
    # a cheap function of a value no other node reads stays where it is computed
    s = _schedule(lambda z: (1 - kiln.sigmoid(z)) @ w, z)
    assert [n.op for n in s.kernels[0].nodes] == ["sigmoid", "sub"]


def test_a_reshape_of_a_stored_value_is_indexed_not_stored_again():
    """The logits' gradient of a sequence model: a matmul reads it as it is, the bias gradient
    sums it reshaped. The kernel stores it once; the sum reads that buffer through the
    reshape."""
    from kiln.ir import dtypes as dt
    from kiln.ir.graph import Graph
    g = Graph("grad")
    x = g.add_input((12, 7), dt.float32, "x")
    w = g.add_input((7, 5), dt.float32, "w")
    e = g.add_node("exp", (x,), {}, (12, 7), dt.float32)
    r = g.add_node("reshape", (e,), {"shape": (3, 4, 7)}, (3, 4, 7), dt.float32)
    total = g.add_node("sum", (r,), {"axes": (0, 1), "keepdim": False}, (7,), dt.float32)
    g.outputs = [g.add_node("matmul", (e, w), {}, (12, 5), dt.float32),
                 g.add_node("mul", (total, 2.0), {}, (7,), dt.float32)]
    schedule = fuse(g)
    rng = np.random.default_rng(0)
    check_schedule(schedule, [rng.standard_normal((12, 7), np.float32),
                              rng.standard_normal((7, 5), np.float32)])
    stored = [v.shape for k in schedule.kernels for v in k.outputs]
    assert (3, 4, 7) not in stored and stored.count((12, 7)) == 1
    (reader,) = [k for k in schedule.kernels if any(n.op == "sum" for n in k.subgraph.nodes)]
    assert reader.inputs == [e] and any(n.op == "reshape" for n in reader.subgraph.nodes)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 14), st.integers(0, 2 ** 32 - 1), st.floats(0.05, 0.6))
def test_a_merge_closes_a_cycle_exactly_when_a_longer_path_joins_the_two(n, seed, density):
    """The fuser's cycle test (searched from both ends) against networkx on random DAGs:
    merging a and b closes a loop iff a path of two or more edges runs between them."""
    import networkx as nx

    from kiln.passes.fusion import _Dependencies, _Fuser
    rng = np.random.default_rng(seed)
    q, dag = _Dependencies(), nx.DiGraph()
    for i in range(n):
        q.add(i)
        dag.add_node(i)
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < density:
                q.add_edge(i, j)
                dag.add_edge(i, j)

    class Probe:
        quotient = q

    for a in range(n):
        for b in range(a + 1, n):
            longer = any(nx.has_path(dag, c, b) for c in dag.successors(a) if c != b)
            assert _Fuser._creates_cycle(Probe(), a, b) == longer, (a, b)
            assert _Fuser._creates_cycle(Probe(), b, a) == longer, (b, a)
