"""`lower_schedule` decides at compile time what runs: views-only kernels are never launched,
kernels that gather are split around a `take` call before any executor exists, and the memory
plan (`passes.memory.plan_buffers`) is exactly what the executor allocates; each lowered program
computes what the IR interpreter computes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import kiln

from kiln.codegen.lower import VIEWS_ONLY, LoweredProgram, LoweredStep, lower_schedule
from kiln.compiler import lower_program
from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph
from kiln.ir.interpreter import interpret
from kiln.passes import fusion
from kiln.passes.memory import plan_buffers
from kiln.runtime import c_build, schedule_executor
from kiln.runtime.schedule_executor import ScheduleExecutor

needs_cc = pytest.mark.skipif(c_build.compiler_problem() is not None,
                              reason="needs a working C compiler with OpenMP")


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")       # the generated kernels, no trials
    c_build.clear_memory_cache()
    yield tmp_path
    c_build.clear_memory_cache()


def _transposed_matmul() -> Graph:
    """tanh(a) @ b.T: b's transpose is a view the matmul reads through strides."""
    g = Graph("mm_t")
    a = g.add_input((6, 5), dt.float32, "a")
    b = g.add_input((4, 5), dt.float32, "b")
    t = g.add_node("tanh", (a,), {}, (6, 5), dt.float32)
    bt = g.add_node("permute", (b,), {"perm": (1, 0)}, (5, 4), dt.float32)
    mm = g.add_node("matmul", (t, bt), {}, (6, 4), dt.float32)
    g.outputs = [g.add_node("mul", (mm, 2.0), {}, (6, 4), dt.float32)]
    return g


def _gather() -> Graph:
    """exp(x)[idx] * 3 + 1, with the index computed in the same kernel: a fused gather."""
    g = Graph("gather")
    x = g.add_input((10,), dt.float32, "x")
    i = g.add_input((4,), dt.int64, "i")
    e = g.add_node("exp", (x,), {}, (10,), dt.float32)
    j = g.add_node("add", (i, 1), {}, (4,), dt.int64)
    t = g.add_node("take", (e, j), {"axis": 0}, (4,), dt.float32)
    m = g.add_node("mul", (t, 3.0), {}, (4,), dt.float32)
    g.outputs = [g.add_node("add", (m, 1.0), {}, (4,), dt.float32)]
    return g


def _check_runs(graph: Graph, lowered: LoweredProgram, inputs: list) -> ScheduleExecutor:
    ex = ScheduleExecutor(lowered).wait()
    for _ in range(2):                      # again: the kept buffers are reused
        got, _ = ex.run(inputs)
        want, _ = interpret(graph, inputs)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        del got, a                          # the caller drops what it got
    return ex


@needs_cc
@pytest.mark.parametrize("target", ["c", "triton"])
def test_views_only_kernels_are_views_not_launches(cache_dir, target):
    g = _transposed_matmul()
    g.outputs.append(g.nodes[1].out)            # the permute leaves too: a step of its own
    schedule = fusion.fuse(g)
    views = [k for k in schedule.kernels if all(n.op == "permute" for n in k.subgraph.nodes)]
    assert len(views) == 1                      # fusion made a kernel of the lone permute
    lowered = lower_program(schedule, target)
    kinds = [(s.kind, s.why) for s in lowered.steps]
    assert ("view", VIEWS_ONLY) in kinds
    (view,) = [s for s in lowered.steps if s.kind == "view"]
    assert view.kernel is None and view.view == ("permute", (("perm", (1, 0)),))
    (matmul,) = [s for s in lowered.steps if s.kind == "matmul"]
    assert matmul.view is None and view.outs[0] in matmul.ins
    generated = [s for s in lowered.steps if s.kind == target]
    assert generated and all("permute" not in s.name for s in generated)
    if target == "c":
        assert "fused_permute" not in lowered.module_source
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((6, 5), np.float32), rng.standard_normal((4, 5), np.float32)
        ex = _check_runs(g, lowered, [a, b])
        assert [k for k, *_ in ex.steps].count("c") == len(generated)


@needs_cc
@pytest.mark.parametrize("target", ["c", "triton"])
def test_a_view_read_only_by_matmuls_is_taken_by_the_matmul(cache_dir, target):
    g = _transposed_matmul()                    # tanh(a) @ b.T * 2: b.T read only by the matmul
    lowered = lower_program(fusion.fuse(g), target)
    assert [s.kind for s in lowered.steps] == [target, "matmul", target]
    matmul = lowered.steps[1]
    assert matmul.view == (None, ("permute", (("perm", (1, 0)),)))
    assert matmul.ins[1] == lowered.input_slots[1]          # b itself, transposed by the step
    assert "permute(%b" in str(lowered)
    if target == "c":
        rng = np.random.default_rng(1)
        a, b = rng.standard_normal((6, 5), np.float32), rng.standard_normal((4, 5), np.float32)
        _check_runs(g, lowered, [a, b])


@needs_cc
def test_gathers_are_split_at_compile_time_not_by_the_executor(cache_dir, monkeypatch):
    g = _gather()
    schedule = fusion.fuse(g)
    exp, gather = schedule.kernels
    assert any(n.op == "take" for n in gather.subgraph.nodes)      # fusion fused the gather
    lowered = lower_program(schedule, "c")
    assert [(s.kind, s.number) for s in lowered.steps] == \
        [("c", "k0"), ("c", "k1a"), ("array", ""), ("c", "k1b")]
    assert lowered.steps[2].name == "take"
    assert all("take" not in s.kernel.source for s in lowered.steps if s.kind == "c")
    # the executor runs it with no pass at all
    monkeypatch.setattr(fusion, "fuse", lambda *a, **k: pytest.fail("fuse ran at run time"))
    monkeypatch.setattr(fusion, "split_gathers",
                        lambda *a, **k: pytest.fail("split_gathers ran at run time"))
    x = np.linspace(-1, 1, 10, dtype=np.float32)
    _check_runs(g, lowered, [x, np.array([0, 3, 8, 2])])


@needs_cc
def test_lowering_is_plain_data_and_repeatable(cache_dir):
    schedule = fusion.fuse(_transposed_matmul())
    a, b = lower_program(schedule, "c"), lower_program(schedule, "c")
    assert a == b                       # same steps, kernels, slots, frees and buffers
    assert all(isinstance(s, LoweredStep) for s in a.steps)
    assert len(a.free) == len(a.steps) and a.buffer_bytes
    with pytest.raises(ValueError, match="unknown kernel target 'cuda'"):
        lower_schedule(schedule, "cuda")


def _program(steps: list, shapes: list, outputs: tuple) -> LoweredProgram:
    """A lowered program by hand: slot 0 is the input, f32 values of `shapes`."""
    return LoweredProgram("p", "c", tuple(steps), tuple(f"%{i}" for i in range(len(shapes))),
                          tuple(shapes), (np.dtype(np.float32),) * len(shapes), (0,), (),
                          outputs, (), {})


def test_buffers_are_reused_by_liveness_but_never_under_a_live_view():
    c = LoweredStep("c", (0,), (1,), kept=(True,))
    second = LoweredStep("c", (0,), (2,), kept=(True,))
    last = LoweredStep("c", (1, 2), (3,), kept=(True,))
    # %1 is read last by the step writing %2 - no reuse there; %3 may take %1's buffer
    plan = plan_buffers(_program([c, second, last], [(8,)] * 4, (3,)))
    assert plan.buffer_of[1] != plan.buffer_of[2]
    # the output gets its own buffer (the caller may hold it on the next call)
    assert plan.buffer_of[3] not in (plan.buffer_of[1], plan.buffer_of[2])
    reuse = LoweredStep("c", (0,), (1,), kept=(True,))
    after = LoweredStep("c", (1,), (2,), kept=(True,))
    again = LoweredStep("c", (2,), (3,), kept=(True,))
    out = LoweredStep("c", (3,), (4,), kept=(True,))
    plan = plan_buffers(_program([reuse, after, again, out], [(8,)] * 5, (4,)))
    assert plan.buffer_of[3] == plan.buffer_of[1] and len(plan.buffer_bytes) == 3
    assert plan.free == [(), (1,), (2,), (3,)]
    # %2 a view of %1 read by the last step: %1's buffer stays taken until then
    view = LoweredStep("view", (1,), (2,), view=("reshape", (("shape", (8,)),)))
    other = LoweredStep("c", (0,), (3,), kept=(True,))
    both = LoweredStep("c", (2, 3), (4,), kept=(True,))
    plan = plan_buffers(_program([reuse, view, other, both], [(8,)] * 5, (4,)))
    assert plan.buffer_of[3] != plan.buffer_of[1]
    # without the view, %3 takes the buffer %1 left
    plan = plan_buffers(_program([reuse, LoweredStep("c", (1,), (2,), kept=(False,)), other,
                                  both], [(8,)] * 5, (4,)))
    assert plan.buffer_of[3] == plan.buffer_of[1]


@needs_cc
def test_the_executor_allocates_exactly_the_planned_buffers(cache_dir, monkeypatch):
    g = _transposed_matmul()
    lowered = lower_program(fusion.fuse(g), "c")
    made = []
    real = schedule_executor._new_buffer
    monkeypatch.setattr(schedule_executor, "_new_buffer",
                        lambda i, n, *xp: made.append((i, n)) or real(i, n, *xp))
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((6, 5), np.float32), rng.standard_normal((4, 5), np.float32)]
    ex = _check_runs(g, lowered, inputs)       # two runs; the caller drops the outputs
    assert sorted(made) == list(enumerate(lowered.buffer_bytes))     # each once, its size
    # an output the caller keeps is not written over: its buffer is replaced
    (kept,), _ = ex.run(inputs)
    before = kept.copy()
    made.clear()
    (again,), _ = ex.run([inputs[0] * 2, inputs[1]])
    (b,) = [s.buffers[0] for s in lowered.steps if lowered.output_slots[0] in s.outs]
    assert made == [(b, lowered.buffer_bytes[b])] and again.base is not kept.base
    np.testing.assert_array_equal(kept, before)
    want, _ = interpret(g, [inputs[0] * 2, inputs[1]])
    np.testing.assert_allclose(again, want[0], rtol=1e-5, atol=1e-6)


@needs_cc
def test_outputs_kept_between_calls_or_views_of_them_are_never_written_over(cache_dir,
                                                                             monkeypatch):
    g = _transposed_matmul()
    lowered = lower_program(fusion.fuse(g), "c")
    made = []
    real = schedule_executor._new_buffer
    monkeypatch.setattr(schedule_executor, "_new_buffer",
                        lambda i, n, *xp: made.append(i) or real(i, n, *xp))
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 5), np.float32), rng.standard_normal((4, 5), np.float32)
    ex = _check_runs(g, lowered, [a, b])
    kept = [ex.run([a * k, b])[0][0][::2].T for k in (1, 2, 3)]     # views of the outputs
    for k, view in zip((1, 2, 3), kept):
        want, _ = interpret(g, [a * k, b])
        np.testing.assert_allclose(view, want[0][::2].T, rtol=1e-5, atol=1e-6)
    assert len(made) == len(lowered.buffer_bytes) + 2       # the held output's buffer, twice
    made.clear()
    del kept, view
    for _ in range(3):          # nothing held: the kept buffers serve every call
        (out,), _ = ex.run([a, b])
        del out
    assert made == []


def test_a_lowered_step_names_its_fields():
    # the program cache writes these fields; a new one must be written there too
    assert [f.name for f in dataclasses.fields(LoweredStep)] == [
        "kind", "ins", "outs", "name", "number", "kernel", "graph", "view", "why",
        "in_dtypes", "in_place", "kept", "buffers", "node_plan"]


@needs_cc
@pytest.mark.parametrize("fn, shapes", [
    (lambda x: kiln.diff(x, 6, 1), [(3, 3, 3)]),          # an empty intermediate
    (lambda x, y: kiln.cdist(x, y), [(3, 5, 0), (3, 2, 0)]),  # reductions over nothing
    (lambda x, y: kiln.cdist(x, y), [(3, 0, 4), (3, 2, 4)]),
    (lambda x: (x.exp() + 1).sum(0), [(0, 4)]),
])
def test_groups_with_empty_tensors_compile_and_equal_eager(cache_dir, fn, shapes):
    """A fused group touching a tensor with no elements runs on the NumPy executor (there
    is no loop to generate); it once failed the whole compile (a modulo by zero)."""
    import warnings
    xs = [kiln.randn(*s) for s in shapes]
    compiled = kiln.compile(fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            out = compiled(*xs)
    expected = fn(*xs)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6)


def _pieces_side_by_side(order=(0, 1, 2, 3), width: int = 12) -> Graph:
    """Four functions of a and b, zero-padded side by side along the columns and summed (an
    LSTM step's gate gradients assembled for its products), and a * b read apart; the sum is
    read by a matmul, its pieces by nothing else. A width over 12 leaves zero columns."""
    g = Graph("pieces")
    a = g.add_input((6, 3), dt.float32, "a")
    b = g.add_input((6, 3), dt.float32, "b")
    w = g.add_input((width, 5), dt.float32, "w")
    both = g.add_node("mul", (a, b), {}, (6, 3), dt.float32)
    pieces = [g.add_node("sigmoid", (a,), {}, (6, 3), dt.float32),
              g.add_node("tanh", (both,), {}, (6, 3), dt.float32),
              g.add_node("exp", (b,), {}, (6, 3), dt.float32),
              g.add_node("neg", (both,), {}, (6, 3), dt.float32)]
    total = None
    for i in order:
        pad = g.add_node("pad", (pieces[i],), {"pads": ((0, 0), (3 * i, width - 3 - 3 * i)),
                                                "value": 0}, (6, width), dt.float32)
        total = pad if total is None else g.add_node("add", (total, pad), {}, (6, width),
                                                     dt.float32)
    g.outputs = [g.add_node("matmul", (total, w), {}, (6, 5), dt.float32), both]
    return g


@needs_cc
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (2, 0, 3, 1)])
def test_pieces_side_by_side_are_stored_in_place_by_the_kernel_computing_them(cache_dir,
                                                                             order):
    g = _pieces_side_by_side(order)
    plain = fusion.fuse(g)          # without: a kernel of its own copies the pieces together
    assert len(plain.kernels) == 2
    schedule = fusion.fuse(g, pieces=True)
    (kernel,) = schedule.kernels
    assert [v.shape for v in kernel.outputs] == [(6, 3), (6, 12)]
    lowered = lower_program(schedule, "c")
    (step,) = [s for s in lowered.steps if s.kind == "c"]
    source = step.kernel.source
    assert source.count("out1_ptr[") == 4 and "out1_ptr[x0 * 12 + x1 + 9]" in source
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal(s, np.float32) for s in ((6, 3), (6, 3), (12, 5))]
    _check_runs(g, lowered, inputs)


def test_pieces_that_do_not_cover_their_sum_keep_its_kernel():
    assert len(fusion.fuse(_pieces_side_by_side(width=13), pieces=True).kernels) == 2


@needs_cc
def test_views_of_views_are_view_steps(cache_dir):
    """A kernel of views only with several nodes: one view step per node, none on the array
    executor; those read only by matmuls are taken by them."""
    g = Graph("views")
    x = g.add_input((6, 4), dt.float32, "x")
    w = g.add_input((6, 5), dt.float32, "w")
    e = g.add_node("exp", (x,), {}, (6, 4), dt.float32)
    r = g.add_node("reshape", (e,), {"shape": (2, 3, 4)}, (2, 3, 4), dt.float32)
    back = g.add_node("reshape", (r,), {"shape": (6, 4)}, (6, 4), dt.float32)
    t = g.add_node("permute", (back,), {"perm": (1, 0)}, (4, 6), dt.float32)
    g.outputs = [g.add_node("matmul", (t, w), {}, (4, 5), dt.float32), r]
    lowered = lower_program(fusion.fuse(g), "c")
    assert [s.kind for s in lowered.steps] == ["c", "view", "matmul"]   # was c, array, matmul
    assert lowered.steps[1].view[0] == "reshape"
    assert lowered.steps[2].view == (("permute", (("perm", (1, 0)),)), None)
    rng = np.random.default_rng(3)
    _check_runs(g, lowered, [rng.standard_normal((6, 4), np.float32),
                             rng.standard_normal((6, 5), np.float32)])
