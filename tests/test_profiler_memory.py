"""kiln.profiler's memory and stacks: profile_memory's bytes per op and their frees, the CPU Mem
columns, with_stack's frames, export_stacks, group_by_stack_n and export_memory_timeline, each
against what torch.profiler records for the same code. torch's CPU allocator and kiln's arrays
differ in detail (torch's ops are ATen's, kiln's are its primitives), so what is compared is
what must agree: the bytes of a result of known shape, zero for views, the signs of frees, the
grouping, the file formats."""

from __future__ import annotations

import json
import pickle
import re
import sys
import warnings

import pytest
import torch
import torch.profiler

import kiln
from kiln.ir.ops import P
from kiln.profiler import ProfilerActivity, profile, recorder
from kiln.tracer.dispatch import apply

FRAME = re.compile(r"^.+\(\d+\): \S+$")          # "file.py(12): function"
STACK_LINE = re.compile(r"^[^ ;]+(;[^ ;]+)* \d+$")  # "f(1):_a;f(2):_b 17"


@pytest.fixture(autouse=True)
def _no_hook_left_behind():
    assert P.dispatch is apply
    yield
    assert P.dispatch is apply, "a profiler left its dispatch hook installed"


def operands(lib):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 32, generator=gen), torch.randn(32, 16, generator=gen)
    if lib is kiln:
        return kiln.tensor(a.numpy()), kiln.tensor(b.numpy())
    return a, b


def forward(lib, a, b):
    """matmul (a new 64x16 float32 result), a view of it, and a relu of it."""
    c = a @ b
    c.view(-1)
    return lib.relu(c)


def memory_by_name(prof) -> dict:
    """name -> (self bytes, total bytes), summed over the trace's events."""
    out: dict = {}
    for e in prof.events():
        s, t = out.get(e.name, (0, 0))
        out[e.name] = (s + e.self_cpu_memory_usage, t + e.cpu_memory_usage)
    return out


def run_both(fn, **options):
    """fn(lib, a, b) under each library's profiler; returns (torch's, kiln's) profiles."""
    profs = []
    for lib, prof_mod in ((torch, torch.profiler), (kiln, kiln.profiler)):
        a, b = operands(lib)
        extra = {}
        if lib is torch and options.get("with_stack"):      # torch keeps op stacks only so
            extra["experimental_config"] = torch._C._profiler._ExperimentalConfig(verbose=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with prof_mod.profile(activities=[prof_mod.ProfilerActivity.CPU],
                                  **options, **extra) as prof:
                fn(lib, a, b)
        profs.append(prof)
    return profs


def test_an_ops_result_bytes_match_torch_and_views_allocate_nothing():
    theirs, ours = run_both(forward, profile_memory=True)
    t, k = memory_by_name(theirs), memory_by_name(ours)
    assert t["aten::mm"][0] == k["kiln::matmul"][0] == 64 * 16 * 4
    assert t["aten::clamp_min"][0] == k["kiln::relu"][0] == 64 * 16 * 4
    assert t["aten::view"] == k["kiln::reshape"] == (0, 0)
    # c and the discarded result are freed when forward returns, outside any op: negative
    # "[memory]" events in both, of the same bytes
    assert t["[memory]"] == k["[memory]"] == (-2 * 64 * 16 * 4, -2 * 64 * 16 * 4)


def test_a_range_totals_its_childrens_memory_and_owns_the_frees_inside_it():
    def block(lib, a, b):
        prof_mod = torch.profiler if lib is torch else kiln.profiler
        with prof_mod.record_function("block"):
            c = a @ b
            d = lib.relu(c)
            del c
        return d

    theirs, ours = run_both(block, profile_memory=True)
    t, k = memory_by_name(theirs)["block"], memory_by_name(ours)["block"]
    assert t == k == (-64 * 16 * 4, 64 * 16 * 4)


def test_table_shows_torchs_memory_columns_in_torchs_order():
    theirs, ours = run_both(forward, profile_memory=True)

    def titles(table: str) -> list:
        return re.split(r"\s{2,}", table.splitlines()[1].strip())

    t = titles(theirs.key_averages().table(sort_by="self_cpu_memory_usage"))
    k = titles(ours.key_averages().table(sort_by="self_cpu_memory_usage"))
    assert k == t
    assert "CPU Mem" in k and "Self CPU Mem" in k
    text = ours.key_averages().table(sort_by="self_cpu_memory_usage")
    assert "4.00 KB" in text and "-8.00 KB" in text
    # without profile_memory the columns stay out, as in torch
    theirs, ours = run_both(forward)
    plain_t = titles(theirs.key_averages().table(sort_by="cpu_time_total"))
    plain_k = titles(ours.key_averages().table(sort_by="cpu_time_total"))
    assert plain_k == plain_t and "CPU Mem" not in plain_k


@pytest.mark.parametrize("key", ["self_cpu_memory_usage", "cpu_memory_usage"])
def test_sorting_by_memory_puts_the_largest_first(key):
    def sizes(lib, a, b):
        lib.cat([a, a, a])            # 24 KB
        a @ b                         # 4 KB
        lib.relu(a)                   # 8 KB

    theirs, ours = run_both(sizes, profile_memory=True)
    rows = ours.key_averages()
    table = rows.table(sort_by=key, row_limit=1)
    assert "kiln::cat" in table and "24.00 KB" in table
    values = [getattr(r, key) for r in sorted(rows, key=lambda r: -getattr(r, key))]
    assert values == sorted(values, reverse=True)
    top_torch = max(theirs.key_averages(), key=lambda r: getattr(r, key))
    top_kiln = max(rows, key=lambda r: getattr(r, key))
    assert getattr(top_torch, key) == getattr(top_kiln, key) == 3 * 64 * 32 * 4


def test_a_plain_profile_keeps_the_timing_wrapper_and_records_no_memory():
    a, b = operands(kiln)
    with profile() as prof:
        assert P.dispatch is recorder._timed_dispatch
        a @ b
    e = prof.events()[0]
    assert e.cpu_memory_usage == e.self_cpu_memory_usage == 0 and e.stack == []
    with profile(profile_memory=True):
        assert P.dispatch is recorder._traced_dispatch


def user_stack_calls(lib, a, b):
    def first():
        return a @ b

    def second():
        return a @ b
    first()
    second()


def test_stacks_are_the_users_frames_innermost_first():
    theirs, ours = run_both(user_stack_calls, with_stack=True)
    t_mm = [e for e in theirs.events() if e.name == "aten::mm"]
    k_mm = [e for e in ours.events() if e.name == "kiln::matmul"]
    assert len(t_mm) == len(k_mm) == 2
    for t, k, fn in zip(t_mm, k_mm, ("first", "second")):
        assert all(FRAME.match(f) for f in k.stack)
        # both name the same innermost function; kiln's frames are never kiln's own
        assert t.stack[0].endswith(f": {fn}") and k.stack[0].endswith(f": {fn}")
        assert k.stack[1].endswith(": user_stack_calls")
        assert not any("kiln/" in f for f in k.stack)
    # kiln gives the line running now: the `return a @ b` of each
    assert k_mm[0].stack[0] != k_mm[1].stack[0]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_group_by_stack_n_splits_rows_as_torch_does(n):
    theirs, ours = run_both(user_stack_calls, with_stack=True)
    t = [r for r in theirs.key_averages(group_by_stack_n=n) if r.key == "aten::mm"]
    k = [r for r in ours.key_averages(group_by_stack_n=n) if r.key == "kiln::matmul"]
    assert len(k) == len(t) == (1 if n == 0 else 2)
    assert [len(r.stack) for r in k] == [len(r.stack) for r in t]
    assert sum(r.count for r in k) == sum(r.count for r in t) == 2
    t_table = theirs.key_averages(group_by_stack_n=n).table(sort_by="self_cpu_time_total")
    k_table = ours.key_averages(group_by_stack_n=n).table(sort_by="self_cpu_time_total")
    assert ("Source Location" in k_table) == ("Source Location" in t_table) == (n > 0)
    if n:
        assert any(line.rstrip().endswith(k[0].stack[0]) for line in k_table.splitlines())


def test_export_stacks_writes_torchs_flamegraph_lines(tmp_path):
    tprof, ours = run_both(user_stack_calls, with_stack=True)
    t_path, k_path = tmp_path / "torch.txt", tmp_path / "kiln.txt"
    tprof.export_stacks(str(t_path), "self_cpu_time_total")
    ours.export_stacks(str(k_path), "self_cpu_time_total")
    t_lines = t_path.read_text().splitlines()
    k_lines = k_path.read_text().splitlines()
    assert t_lines and k_lines
    assert all(STACK_LINE.match(line) for line in t_lines)
    assert all(STACK_LINE.match(line) for line in k_lines)
    # outermost frame first; the value is the event's self time in whole microseconds
    k_events = [e for e in ours.events() if int(e.self_cpu_time_total) > 0]
    assert len(k_lines) == len(k_events)
    first = k_events[0]
    assert k_lines[0] == ";".join(f.replace(" ", "_") for f in reversed(first.stack)) + \
        f" {int(first.self_cpu_time_total)}"
    with pytest.raises(ValueError, match="metric should be one of"):
        ours.export_stacks(str(k_path), "cpu_time_total")


def test_export_stacks_and_the_timeline_need_what_they_read(tmp_path):
    a, b = operands(kiln)
    with profile() as prof:
        a @ b
    with pytest.raises(RuntimeError, match="with_stack=True"):
        prof.export_stacks(str(tmp_path / "s.txt"))
    with pytest.raises(RuntimeError, match="profile_memory=True"):
        prof.export_memory_timeline(str(tmp_path / "m.json"))
    with profile(profile_memory=True) as prof:
        a @ b
    with pytest.raises(NotImplementedError, match="JSON form only"):
        prof.export_memory_timeline(str(tmp_path / "m.html"))
    with pytest.raises(ValueError, match="expected 'cpu'"):
        prof.export_memory_timeline(str(tmp_path / "m.json"), device="tpu")


def test_memory_timeline_has_torchs_structure_and_step(tmp_path):
    def alloc_and_free(lib, a, b):
        c = a @ b
        del c

    theirs, ours = run_both(alloc_and_free, profile_memory=True, record_shapes=True,
                            with_stack=True)
    paths = tmp_path / "torch.json", tmp_path / "kiln.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.export_memory_timeline(str(paths[0]), device="cpu")
    ours.export_memory_timeline(str(paths[1]), device="cpu")
    (t_times, t_sizes), (k_times, k_sizes) = (json.loads(p.read_text()) for p in paths)
    assert len(k_times) == len(k_sizes) and k_times == sorted(k_times)
    assert all(isinstance(t, int) for t in k_times)
    assert {len(row) for row in k_sizes} == {len(row) for row in t_sizes} == {9}
    # both start from the inputs that were there already, rise by the result and fall back
    t_last = [row[-1] for row in t_sizes]
    k_last = [row[-1] for row in k_sizes]
    assert k_last == t_last
    assert max(k_last) - k_last[0] == 64 * 16 * 4
    assert sum(map(sum, (row[:-1] for row in k_sizes))) == 0      # kiln: uncategorized only


def test_legacy_autograd_profiler_records_memory():
    a, b = operands(kiln)
    with kiln.autograd.profiler.profile(profile_memory=True) as prof:
        a @ b
    assert "Self CPU Mem" in prof.table()
    [event] = [e for e in prof.function_events if e.name == "kiln::matmul"]
    assert event.self_cpu_memory_usage == 64 * 16 * 4


@pytest.mark.gpu
def test_cuda_results_count_as_device_memory():
    a = kiln.ones(64, 64, device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 profile_memory=True) as prof:
        keep = a @ a
    [event] = [e for e in prof.events() if e.name == "kiln::matmul"]
    assert event.self_device_memory_usage == event.device_memory_usage == 64 * 64 * 4
    assert event.self_cpu_memory_usage == 0
    table = prof.key_averages().table(sort_by="self_cuda_memory_usage")
    assert "CUDA Mem" in table and "Self CUDA Mem" in table and "16.00 KB" in table
    del keep


# ----------------------------------------------------------------------------- cuda history

def torch_snapshot_fields() -> dict:
    """The fields of each TypedDict torch's `_snapshot` documents (Segment, Block, Frame,
    TraceEntry), read from its docstring, and the trace actions it lists."""
    doc = torch.cuda.memory._snapshot.__doc__
    fields: dict = {}
    for name, body in re.findall(r"class (\w+)\(TypedDict\):\n(.*?)(?=\n\s*class |\n\s*Args:)",
                                 doc, re.S):
        fields[name] = set(re.findall(r"^\s{12}(\w+):", body, re.M))
    action_block = doc[doc.index("action: Literal"):doc.index("addr: int")]
    fields["actions"] = set(re.findall(r'"(\w+)"', action_block))
    return fields


def test_memory_history_needs_a_gpu_as_in_torchs_cpu_build():
    if kiln.cuda.is_available():
        pytest.skip("a GPU (or the fake) is present")
    for name in ("_record_memory_history", "_snapshot", "_dump_snapshot"):
        if not torch.cuda.is_available():
            with pytest.raises((RuntimeError, AttributeError)):
                getattr(torch.cuda.memory, name)()
        with pytest.raises(RuntimeError, match="no CUDA GPU is available"):
            getattr(kiln.cuda.memory, name)()
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        kiln.cuda.memory_snapshot()


@pytest.mark.gpu
def test_memory_history_records_allocs_and_frees_in_torchs_structure(tmp_path):
    torch_fields = torch_snapshot_fields()
    kiln.cuda.memory._record_memory_history(max_entries=100_000)
    try:
        a = kiln.ones(64, 64, device="cuda")
        b = a @ a; line = sys._getframe().f_lineno     # noqa: E702
        del b
        snapshot = kiln.cuda.memory._snapshot()
    finally:
        kiln.cuda.memory._record_memory_history(enabled=None)
    assert set(snapshot) == {"segments", "device_traces"}
    trace = snapshot["device_traces"][0]
    actions = [e["action"] for e in trace]
    assert set(actions) <= torch_fields["actions"]
    assert actions[-4:] == ["alloc", "alloc", "free_requested", "free_completed"]
    for entry in trace:
        assert set(entry) <= torch_fields["TraceEntry"]
        assert entry["size"] == 64 * 64 * 4
        for frame in entry["frames"]:
            assert set(frame) <= torch_fields["Frame"]
    matmul = trace[-3]
    assert {"filename": __file__, "line": line,
            "name": "test_memory_history_records_allocs_and_frees_in_torchs_structure"} \
        in matmul["frames"]
    assert trace[-1]["addr"] == trace[-2]["addr"] == matmul["addr"]
    for segment in snapshot["segments"]:
        assert set(segment) <= torch_fields["Segment"] | {"device"}
    path = tmp_path / "snapshot.pickle"
    kiln.cuda.memory._dump_snapshot(str(path))
    assert pickle.loads(path.read_bytes()) == snapshot
    # stopped: nothing more is recorded
    kiln.ones(8, device="cuda")
    assert kiln.cuda.memory._snapshot()["device_traces"][0] == trace


@pytest.mark.gpu
def test_memory_history_keeps_the_newest_max_entries():
    kiln.cuda.memory._record_memory_history(max_entries=2)
    try:
        kept = [kiln.ones(n, device="cuda") for n in (128, 256, 512)]
        trace = kiln.cuda.memory._snapshot()["device_traces"][0]
    finally:
        kiln.cuda.memory._record_memory_history(enabled=None)
    assert [e["size"] for e in trace] == [256 * 4, 512 * 4]
    assert kiln.cuda.memory_snapshot() == kiln.cuda.memory._snapshot()["segments"]
    with pytest.raises(ValueError, match="enabled='yes'"):
        kiln.cuda.memory._record_memory_history(enabled="yes")
    del kept
