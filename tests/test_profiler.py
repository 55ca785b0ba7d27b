"""kiln.profiler: what it records (op counts, ranges, shapes, compiled calls, self vs total time),
how it prints and exports it, the schedule's step semantics against torch.profiler's, and that
a stopped profiler leaves the dispatcher exactly as it found it."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.profiler

import kiln
from kiln.compiler import CompiledFunction
from kiln.ir.ops import P
from kiln.profiler import (ProfilerAction, ProfilerActivity, profile, record_function, recorder,
                           schedule, tensorboard_trace_handler)
from kiln.tracer.dispatch import apply

COMPILED_CALL = CompiledFunction.__call__
TOL = 1e-6        # µs: float rounding of nanosecond timestamps


@pytest.fixture(autouse=True)
def _no_hook_left_behind():
    """Every test starts and ends with the dispatcher and CompiledFunction untouched."""
    assert P.dispatch is apply and CompiledFunction.__call__ is COMPILED_CALL
    yield
    assert P.dispatch is apply, "a profiler left its dispatch hook installed"
    assert CompiledFunction.__call__ is COMPILED_CALL
    assert recorder.active() is None


def counts(prof, **group) -> dict:
    return {e.key: e.count for e in prof.key_averages(**group)}


def children(events, parent) -> list:
    """The events directly inside `parent` (same thread, within its time, not inside another
    event that is inside it)."""
    inside = [e for e in events if e is not parent and e.thread == parent.thread
              and e.start_us >= parent.start_us - TOL and e.end_us <= parent.end_us + TOL
              and e.cpu_time_total <= parent.cpu_time_total]
    return [e for e in inside if not any(
        o is not e and o.start_us <= e.start_us + TOL and e.end_us <= o.end_us + TOL
        and o.cpu_time_total > e.cpu_time_total for o in inside)]


# ----------------------------------------------------------------------------- what is recorded

def test_op_counts_match_what_ran():
    a, b = kiln.randn(8, 8), kiln.randn(8, 8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            c = a @ b
        c + a
        c + b
    assert counts(prof) == {"kiln::matmul": 3, "kiln::add": 2}


def test_record_function_ranges_counted_and_nested():
    a = kiln.randn(4, 4)

    @record_function("decorated")
    def work(depth):
        a * 2.0
        if depth:
            work(depth - 1)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("model_inference"):
            for _ in range(4):
                with record_function("layer"):
                    a + a
                    a + a
            work(2)
    assert counts(prof) == {"model_inference": 1, "layer": 4, "kiln::add": 8, "decorated": 3,
                            "kiln::mul": 3}
    events = prof.events()
    (root,) = [e for e in events if e.name == "model_inference"]
    assert {e.name for e in children(events, root)} == {"layer", "decorated"}
    for layer in (e for e in events if e.name == "layer"):
        assert [e.name for e in children(events, layer)] == ["kiln::add", "kiln::add"]
    # the recursive decorator nests: each "decorated" holds one mul and the next one
    outer = min((e for e in events if e.name == "decorated"), key=lambda e: e.start_us)
    assert sorted(e.name for e in children(events, outer)) == ["decorated", "kiln::mul"]


def test_self_time_is_total_less_direct_children():
    a = kiln.randn(64, 64)
    with profile() as prof:
        with record_function("outer"):
            with record_function("inner"):
                a @ a
                a + a
            a @ a
    events = prof.events()
    assert events, "nothing recorded"
    for e in events:
        kids = children(events, e)
        assert 0 <= e.self_cpu_time_total <= e.cpu_time_total + TOL
        assert e.cpu_time_total + TOL >= sum(k.cpu_time_total for k in kids)
        assert e.self_cpu_time_total == pytest.approx(
            e.cpu_time_total - sum(k.cpu_time_total for k in kids), abs=1e-3)
    averages = {e.key: e for e in prof.key_averages()}
    assert averages["outer"].cpu_time_total == pytest.approx(
        prof.key_averages().total_average().self_cpu_time_total, abs=1e-3)
    matmuls = [e for e in events if e.name == "kiln::matmul"]
    assert averages["kiln::matmul"].cpu_time_total == pytest.approx(
        sum(e.cpu_time_total for e in matmuls))
    assert averages["kiln::matmul"].cpu_time == pytest.approx(
        averages["kiln::matmul"].cpu_time_total / 2)


def test_group_by_input_shape_separates_shapes():
    x, y = kiln.ones(2, 3), kiln.ones(4, 5)
    with profile(record_shapes=True) as prof:
        x + x
        x + x
        y + 1.0
    grouped = [(e.key, e.count, e.input_shapes)
               for e in prof.key_averages(group_by_input_shape=True)]
    assert grouped == [("kiln::add", 2, [[2, 3], [2, 3]]), ("kiln::add", 1, [[4, 5], []])]
    assert [(e.key, e.count, e.input_shapes) for e in prof.key_averages()] == \
        [("kiln::add", 3, [])]

    with profile(record_shapes=False) as prof:
        x + x
        y + y
    assert [(e.key, e.count) for e in prof.key_averages(group_by_input_shape=True)] == \
        [("kiln::add", 2)]


def test_compiled_function_is_one_event_per_call():
    w = kiln.randn(8, 8)

    def step(x):
        return (x @ w + 1.0).relu()

    compiled = kiln.compile(step, backend="numpy")
    x = kiln.randn(8, 8)
    compiled(x)                              # traced and compiled before the profile
    with profile(record_shapes=True) as prof:
        for _ in range(3):
            compiled(x)
    assert counts(prof) == {"kiln.compile: step": 3}   # a replay runs no dispatched op
    (avg,) = prof.key_averages(group_by_input_shape=True)
    assert avg.input_shapes == [[8, 8]]


def test_compiled_first_call_shows_its_traced_ops():
    def first(x):
        return x * 2.0 + 1.0

    compiled = kiln.compile(first, backend="numpy")
    with profile() as prof:
        compiled(kiln.ones(3))
    events = prof.events()
    (call,) = [e for e in events if e.name == "kiln.compile: first"]
    assert {e.name for e in children(events, call)} >= {"kiln::mul", "kiln::add"}


def test_ops_on_other_threads_are_recorded_on_their_own_stack():
    a = kiln.ones(16)
    with profile() as prof:
        with record_function("main"):
            worker = threading.Thread(target=lambda: [a + a for _ in range(5)])
            worker.start()
            worker.join()
    events = prof.events()
    (main,) = [e for e in events if e.name == "main"]
    adds = [e for e in events if e.name == "kiln::add"]
    assert len(adds) == 5 and all(e.thread != main.thread for e in adds)
    assert main.self_cpu_time_total == pytest.approx(main.cpu_time_total)   # not its children


# ----------------------------------------------------------------------------- off means off

def test_nothing_recorded_outside_the_profile_and_hooks_removed_when_the_body_raises():
    a = kiln.ones(3)
    with record_function("no profiler"):     # a no-op without a profiler
        a + a
    with pytest.raises(ValueError, match="boom"):
        with profile() as prof:
            a + a
            raise ValueError("boom")
    assert P.dispatch is apply and recorder.active() is None
    assert counts(prof) == {"kiln::add": 1}
    a + a
    with record_function("after"):
        a * a
    assert counts(prof) == {"kiln::add": 1}


def test_hooks_removed_when_on_trace_ready_raises():
    def handler(prof):
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        with profile(on_trace_ready=handler):
            kiln.ones(2) + 1.0


def test_profiles_do_not_nest():
    with profile() as outer:
        with pytest.raises(RuntimeError, match="do not nest"):
            with profile():
                pass
        kiln.ones(2) + 1.0
    assert counts(outer) == {"kiln::full": 1, "kiln::add": 1}


def test_results_read_inside_the_block_say_so():
    with profile() as prof:
        with pytest.raises(RuntimeError, match="still being recorded"):
            prof.key_averages()


# ----------------------------------------------------------------------------- the table

def _table_lines(text: str) -> list:
    return text.rstrip("\n").split("\n")


def test_table_header_rows_and_footer():
    a = kiln.randn(16, 16)
    with profile(record_shapes=True) as prof:
        with record_function("model_inference"):
            for _ in range(3):
                a @ a
            a + a
            a.relu()
            a - a
    text = prof.key_averages().table(sort_by="cpu_time_total", row_limit=3)
    lines = _table_lines(text)
    titles = ["Name", "Self CPU %", "Self CPU", "CPU total %", "CPU total", "CPU time avg",
              "# of Calls"]
    assert [t.strip() for t in lines[1].split("  ") if t.strip()] == titles
    assert set(lines[0]) == set(lines[2]) == set(lines[-2]) == {"-", " "}
    rows = lines[3:-2]
    assert len(rows) == 3
    assert rows[0].split()[0] == "model_inference" and rows[0].split()[3] == "100.00%"
    assert lines[-1].startswith("Self CPU time total: ")
    assert "Input Shapes" not in text

    largest = sorted(prof.key_averages(), key=lambda e: e.cpu_time_total, reverse=True)[:3]
    assert [row.split()[0] for row in rows] == [e.key for e in largest]
    assert [row.split()[-1] for row in rows] == [str(e.count) for e in largest]

    grouped = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                                 row_limit=10)
    header = _table_lines(grouped)[1]
    assert header.split("  ")[-1].strip() == "Input Shapes"
    assert "[[16, 16], [16, 16]]" in grouped


def test_table_header_matches_torch():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tprof:
        torch.ones(2) + 1
    with profile() as prof:
        kiln.ones(2) + 1.0

    def titles(text):
        return [t.strip() for t in _table_lines(text)[1].split("  ") if t.strip()]

    assert titles(prof.key_averages().table()) == \
        titles(tprof.key_averages().table(sort_by="cpu_time_total"))


def test_table_sort_keys():
    with profile() as prof:
        kiln.ones(2) + 1.0
    with pytest.raises(ValueError, match="sort by one of"):
        prof.key_averages().table(sort_by="speed")
    text = prof.key_averages().table(sort_by="cuda_time_total")
    assert "kiln does not measure cuda_time_total" in text


# ----------------------------------------------------------------------------- chrome trace

def test_chrome_trace_is_valid_and_events_nest(tmp_path):
    a = kiln.randn(32, 32)
    with profile(record_shapes=True) as prof:
        with record_function("outer"):
            a @ a
            with record_function("inner"):
                a + a
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert sorted(e["name"] for e in spans) == ["inner", "kiln::add", "kiln::matmul", "outer"]
    by_name = {e["name"]: e for e in spans}
    for e in spans:
        assert isinstance(e["ts"], (int, float)) and e["dur"] >= 0
        assert {"pid", "tid", "cat"} <= set(e)

    def within(child, parent):
        return parent["ts"] - 1e-3 <= child["ts"] and \
            child["ts"] + child["dur"] <= parent["ts"] + parent["dur"] + 1e-3

    assert within(by_name["kiln::matmul"], by_name["outer"])
    assert within(by_name["inner"], by_name["outer"])
    assert within(by_name["kiln::add"], by_name["inner"])
    assert not within(by_name["kiln::matmul"], by_name["inner"])
    assert by_name["kiln::add"]["args"]["Input Dims"] == [[32, 32], [32, 32]]
    # any two spans on a thread are disjoint or one holds the other
    for x in spans:
        for y in spans:
            if x is not y and x["tid"] == y["tid"]:
                disjoint = x["ts"] + x["dur"] <= y["ts"] + 1e-3 or \
                    y["ts"] + y["dur"] <= x["ts"] + 1e-3
                assert disjoint or within(x, y) or within(y, x)


def test_tensorboard_trace_handler_writes_a_trace_per_cycle(tmp_path):
    with profile(schedule=schedule(wait=0, warmup=1, active=1),
                 on_trace_ready=tensorboard_trace_handler(str(tmp_path / "log"), "worker0")) \
            as prof:
        for _ in range(4):
            kiln.ones(2) + 1.0
            prof.step()
    files = sorted((tmp_path / "log").iterdir())
    assert len(files) == 2 and all(f.name.startswith("worker0.") and
                                   f.name.endswith(".pt.trace.json") for f in files)
    for f in files:
        names = [e["name"] for e in json.loads(f.read_text())["traceEvents"] if e["ph"] == "X"]
        assert sorted(names) == ["ProfilerStep#1", "kiln::add", "kiln::full"] or \
            sorted(names) == ["ProfilerStep#3", "kiln::add", "kiln::full"]


# ----------------------------------------------------------------------------- schedule

SCHEDULES = [dict(wait=1, warmup=1, active=2, repeat=1), dict(wait=1, warmup=1, active=2),
             dict(wait=0, warmup=1, active=1, repeat=2, skip_first=3),
             dict(wait=2, warmup=1, active=3, skip_first=1, skip_first_wait=1)]


@pytest.mark.parametrize("args", SCHEDULES)
def test_schedule_actions_match_torch(args):
    ours, theirs = schedule(**args), torch.profiler.schedule(**args)
    assert [ours(s).name for s in range(20)] == [theirs(s).name for s in range(20)]


def test_schedule_records_exactly_the_active_steps():
    seen = []

    def handler(prof):
        seen.append((prof.step_num, counts(prof)))

    with profile(activities=[ProfilerActivity.CPU],
                 schedule=schedule(wait=1, warmup=1, active=2, repeat=1),
                 on_trace_ready=handler) as prof:
        for step in range(6):
            with record_function(f"work{step}"):
                kiln.ones(2) + 1.0
            prof.step()
    assert seen == [(4, {"ProfilerStep*": 2, "work2": 1, "kiln::full": 2, "kiln::add": 2,
                         "work3": 1})]
    names = [e.name for e in prof.events() if e.name.startswith("ProfilerStep#")]
    assert names == ["ProfilerStep#2", "ProfilerStep#3"]
    assert prof.current_action is None and prof.step_num == 6


def _handler_steps(profile_cls, schedule_fn, steps: int) -> list:
    seen = []
    with profile_cls(schedule=schedule_fn, on_trace_ready=lambda p: seen.append(p.step_num)) \
            as prof:
        for _ in range(steps):
            prof.step()
    return seen


@pytest.mark.parametrize("args", [dict(wait=1, warmup=1, active=2, repeat=1),
                                  dict(wait=1, warmup=1, active=2),
                                  dict(wait=0, warmup=1, active=3, repeat=2)])
def test_on_trace_ready_steps_match_torch(args):
    ours = _handler_steps(profile, schedule(**args), 11)
    theirs = _handler_steps(torch.profiler.profile, torch.profiler.schedule(**args), 11)
    assert ours == theirs


def test_without_schedule_one_trace_from_start_to_stop():
    seen = []
    with profile(on_trace_ready=lambda p: seen.append(counts(p))) as prof:
        kiln.ones(2) + 1.0
        prof.step()                    # no schedule: steps change nothing
        kiln.ones(2) + 1.0
    assert seen == [{"kiln::full": 2, "kiln::add": 2}]


def test_schedule_action_values():
    s = schedule(wait=1, warmup=1, active=2, repeat=1)
    assert [s(i) for i in range(5)] == [ProfilerAction.NONE, ProfilerAction.WARMUP,
                                        ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE,
                                        ProfilerAction.NONE]
    with pytest.raises(ValueError, match="active must be positive"):
        schedule(wait=1, warmup=1, active=0)


# ----------------------------------------------------------------------------- spellings

def test_autograd_profiler_spelling():
    with kiln.autograd.profiler.profile(record_shapes=True) as prof:
        with kiln.autograd.profiler.record_function("block"):
            kiln.ones(2) + 1.0
    assert counts(prof) == {"block": 1, "kiln::full": 1, "kiln::add": 1}
    assert len(prof.function_events) == 3
    with kiln.autograd.profiler.profile(enabled=False) as off:
        kiln.ones(2) + 1.0
    assert counts(off) == {}


def test_cuda_activity_and_unrecorded_options_are_accepted():
    with pytest.warns(UserWarning, match="with_flops not recorded"):
        prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                       with_flops=True)
    with prof:
        kiln.ones(2) + 1.0
    assert counts(prof) == {"kiln::full": 1, "kiln::add": 1}
    with pytest.raises(ValueError, match="not a ProfilerActivity"):
        profile(activities=["gpu"])


@pytest.mark.gpu
def test_cuda_ops_are_recorded_as_cpu_side_dispatch():
    a = kiln.ones(64, 64, device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 record_shapes=True) as prof:
        a @ a
        a + a
    assert counts(prof) == {"kiln::matmul": 1, "kiln::add": 1}
    assert all(e.cpu_time_total > 0 for e in prof.events())


def test_experimental_config_takes_pytorchs_options():
    """profiler_recipe's `experimental_config=torch._C._profiler._ExperimentalConfig(verbose=
    True)`: the same option names as torch's constructor (read from its signature text)."""
    import re

    import torch
    signature = torch._C._profiler._ExperimentalConfig.__init__.__doc__.split("\n")[0]
    theirs = set(re.findall(r"(\w+): [\w.\[\]]+ = ", signature))
    from kiln._C._profiler import _ExperimentalConfig, _OPTIONS
    assert set(_OPTIONS) == theirs
    config = kiln._C._profiler._ExperimentalConfig(verbose=True)
    assert config.verbose is True and config.profiler_metrics == ()
    x = kiln.randn(4, 3)
    with kiln.profiler.profile(experimental_config=config) as prof:
        x.sum()
    assert [e.key for e in prof.key_averages()] == ["kiln::sum"]
    with pytest.raises(TypeError, match="unexpected options"):
        _ExperimentalConfig(verbos=True)
