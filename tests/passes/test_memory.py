"""Memory planning: values sharing a buffer never live at once, and running the schedule with
every value in its planned buffer gives the interpreter's results; write-backs are computed over
their source's memory only when nothing reads the old value afterwards."""

import numpy as np
import pytest

import kiln
import kiln.optim  # noqa: F401

from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph
from kiln.ir.interpreter import interpret
from kiln.passes.cleanup import optimize
from kiln.passes.fusion import fuse
from kiln.passes.memory import in_place_updates, plan_memory
from tests.passes.helpers import CASES, traced


def run_in_planned_buffers(schedule, plan, inputs):
    """Execute `schedule` storing each planned value in its byte buffer (aliasing for real)."""
    graph = schedule.graph
    memory = [np.zeros(max(n, 1), np.uint8) for n in plan.buffer_bytes]
    env = dict(zip(graph.inputs, inputs))
    env.update(graph.constants)

    def read(v):
        if v in plan.buffer_of:
            raw = memory[plan.buffer_of[v]][:v.nbytes]
            return raw.view(v.dtype.np).reshape(v.shape).copy()
        return env[v]
    for step in schedule.steps:
        sub = step.subgraph
        outs, _ = interpret(sub, [read(v) for v in step.inputs])
        for v, a in zip(step.outputs, outs):
            data = np.ascontiguousarray(a, dtype=v.dtype.np).reshape(-1).view(np.uint8)
            memory[plan.buffer_of[v]][:v.nbytes] = data
    return [read(v) for v in graph.outputs], [read(new) for _, new in graph.mutations]


def check_plan(plan):
    by_buffer: dict = {}
    for v, b in plan.buffer_of.items():
        assert plan.buffer_bytes[b] >= v.nbytes
        by_buffer.setdefault(b, []).append(plan.lifetimes[v])
    for spans in by_buffer.values():
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 < b0, "two values share a buffer while both are live"
    assert plan.peak_live_bytes <= plan.planned_bytes <= plan.naive_bytes


@pytest.mark.parametrize("name", sorted(CASES))
def test_planned_schedule_equals_interpreter_on_corpus(name):
    graph, inputs = traced(name)
    optimized, _ = optimize(graph)
    schedule = fuse(optimized)
    plan = plan_memory(schedule)
    check_plan(plan)
    check_plan(plan_memory(optimized))
    got_out, got_mut = run_in_planned_buffers(schedule, plan, inputs)
    want_out, want_mut = interpret(graph, inputs)
    for got, want in zip(got_out + got_mut, want_out + want_mut):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_a_chain_reuses_two_buffers():
    g = Graph("chain")
    v = g.add_input((256,), dt.float32, "x")
    for _ in range(10):
        v = g.add_node("exp", (v,), {}, (256,), dt.float32)
    g.outputs = [v]
    plan = plan_memory(g)
    check_plan(plan)
    assert plan.naive_bytes == 10 * 1024
    # ping-pong between two buffers; the input is the caller's
    assert plan.planned_bytes == 2 * 1024 and len(plan.buffer_bytes) == 2


def _adam_schedule():
    kiln.manual_seed(0)
    w = kiln.randn(8, 4, requires_grad=True)
    opt = kiln.optim.Adam([w], lr=1e-2)
    w.grad = kiln.randn(8, 4)
    opt.step()                    # creates the optimizer state; trace the next step
    (program,) = kiln.compiler.trace(lambda: opt.step(), _snapshot=True).programs
    optimized, _ = optimize(program.graph)
    return fuse(optimized)


def test_optimizer_state_and_parameters_update_in_place():
    s = _adam_schedule()
    in_place = in_place_updates(s)
    # the parameter, both moments and the step counter: each over its own memory
    assert {src.name for src in in_place.values()} == {src.name for src, _ in s.graph.mutations}
    assert all(in_place[new] is src for src, new in s.graph.mutations)


@pytest.mark.parametrize("through_view", [False, True])
def test_a_value_read_after_its_update_is_not_overwritten(through_view):
    g = Graph("late_read")
    p = g.add_input((4, 4), dt.float32, "p")
    q = g.add_input((4, 4), dt.float32, "q")
    new = g.add_node("add", (p, 1.0), {}, (4, 4), dt.float32)
    old = g.add_node("permute", (p,), {"perm": (1, 0)}, (4, 4), dt.float32) \
        if through_view else p
    g.outputs = [g.add_node("matmul", (old, q), {}, (4, 4), dt.float32)]
    g.mutations = [(p, new)]
    s = fuse(g)
    assert [type(st).__name__ for st in s.steps][-1] == "ExternStep"     # reads p last
    assert in_place_updates(s) == {}
    g.outputs = [g.add_node("matmul", (q, q), {}, (4, 4), dt.float32)]
    g.nodes = [n for n in g.nodes if n.op != "permute" and n.inputs != (old, q)]
    assert in_place_updates(fuse(g)) == {new: p}


def _chain() -> Graph:
    """exp -> reshape (a view) -> tanh -> mul by an input: which buffers may be reused."""
    g = Graph("chain")
    x = g.add_input((2, 3), dt.float32, "x")
    y = g.add_input((6,), dt.float32, "y")
    e = g.add_node("exp", (x,), {}, (2, 3), dt.float32)
    r = g.add_node("reshape", (e,), {"shape": (6,)}, (6,), dt.float32)
    t = g.add_node("tanh", (r,), {}, (6,), dt.float32)
    s = g.add_node("neg", (t,), {}, (6,), dt.float32)
    g.outputs = [g.add_node("mul", (s, y), {}, (6,), dt.float32)]
    return g


def test_plan_nodes_frees_after_last_use_and_reuses_only_buffers_owned_outright():
    from kiln.passes.memory import plan_nodes
    g = _chain()
    slot = {v: i for i, v in enumerate(list(g.inputs) + [n.out for n in g.nodes])}
    e, r, t, s, out = (n.out for n in g.nodes)
    plan = plan_nodes(g)
    assert [free for free, _ in plan] == [(), (slot[e],), (slot[r],), (slot[t],), (slot[s],)]
    # tanh may not write over %r: a view of exp's buffer; neg may write over tanh's result,
    # mul over neg's; no node writes over an input of the graph
    assert [reuse for _, reuse in plan] == [None, None, None, slot[t], slot[s]]


@pytest.mark.parametrize("name", ["backward_gelu_layernorm", "adam_training_step"])
def test_the_array_executor_runs_by_plan_nodes_to_the_interpreters_results(name):
    from kiln.passes.memory import plan_nodes
    from kiln.runtime.executor import ArrayExecutor
    graph, inputs = traced(name)
    graph, _ = optimize(graph)
    arrays = [np.asarray(a) for a in inputs]
    want, want_new = interpret(graph, [a.copy() for a in arrays])
    for plan in (plan_nodes(graph), None):       # by the plan, and keeping every value
        got, new = ArrayExecutor(graph, plan=plan).run([a.copy() for a in arrays])
        for a, b in zip(got + new, want + want_new):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
