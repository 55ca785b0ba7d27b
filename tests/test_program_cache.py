"""The compiled-program cache: a graph compiled before skips the passes (in this process and in
a new one), gives the same programs and results, and a corrupt, stale or foreign entry is
ignored and rebuilt."""

import functools
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
import kiln.optim
from kiln import compiler, program_cache
from kiln.passes import pipeline
from kiln.runtime import c_build
from kiln.runtime.c_build import cache_root
from tests.tracer.test_trace_corpus import CASES

needs_cc = pytest.mark.skipif(c_build.compiler_problem() is not None,
                              reason="needs a working C compiler with OpenMP")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    c_build.clear_memory_cache()        # so this directory gets its own kernels
    yield tmp_path
    c_build.clear_memory_cache()


@pytest.fixture
def passes_run(monkeypatch):
    """Counts the compiler's pass-pipeline runs (a cache hit runs none)."""
    calls = []
    real = pipeline.compile_passes

    def counted(*args, **kwargs):
        calls.append(args[0].name)
        return real(*args, **kwargs)
    monkeypatch.setattr(pipeline, "compile_passes", counted)
    return calls


def _softmax_gelu(x, w):
    h = x @ w
    # new_zeros(h.shape) records a kiln.Size, which must read the same after the round trip
    return F.softmax(F.gelu(h, approximate="tanh") * 0.5 + h.new_zeros(h.shape), -1)


def _entries():
    return sorted((cache_root() / "programs").iterdir())


def _call_twice(compiled, *args):
    """Trace, then replay: the replay waits for the C build, which is then cached."""
    compiled(*args)
    return compiled(*args)


def test_second_compile_of_a_graph_reads_the_cache(cache_dir, passes_run, monkeypatch):
    x, w = kiln.randn(4, 8), kiln.randn(8, 16)
    want = _softmax_gelu(x, w).numpy()
    first = kiln.compile(_softmax_gelu)
    np.testing.assert_allclose(_call_twice(first, x, w).numpy(), want, rtol=1e-5, atol=1e-6)
    assert passes_run == ["_softmax_gelu"] and len(_entries()) == 1
    from kiln.codegen import c as cgen
    rendered = []
    real_render = cgen.render_c
    monkeypatch.setattr(cgen, "render_c", lambda *a, **k: rendered.append(1) or
                        real_render(*a, **k))
    second = kiln.compile(_softmax_gelu)
    np.testing.assert_allclose(second(x, w).numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second(x, w).numpy(), want, rtol=1e-5, atol=1e-6)
    assert passes_run == ["_softmax_gelu"] and rendered == []     # no pass, no C rendering
    (a,), (b,) = first.entries.values(), second.entries.values()
    assert b.program is not None and b.calls == 1
    assert a.graph.structure() == b.graph.structure() and str(a.graph) == str(b.graph)
    assert str(a.schedule) == str(b.schedule)
    assert [str(s) for s in a.pass_stats] == [str(s) for s in b.pass_stats]
    assert a.executor.kernels == b.executor.kernels
    assert a.executor.module_source == b.executor.module_source    # so the same .so


def test_gradient_rules_shapes_read_the_same_after_the_round_trip(cache_dir, passes_run):
    """Gradient rules pass `x.shape` (a kiln.Size) as attributes: recorded as plain tuples,
    the cached program renders the very same C source, so it finds the same shared object."""
    w = kiln.randn(8, 4).requires_grad_()

    def step(x, y):
        w.grad = None
        loss = F.cross_entropy(F.gelu(x @ w), y)      # take's gradient makes full(x.shape)
        loss.backward()
        return loss.detach()
    x, y = kiln.randn(5, 8), kiln.tensor([0, 3, 1, 2, 2])
    first, second = kiln.compile(step), kiln.compile(step)
    _call_twice(first, x, y)
    _call_twice(second, x, y)
    assert len(passes_run) == 1
    a, b = list(first.entries.values())[0], list(second.entries.values())[0]
    assert a.executor.module_source == b.executor.module_source


def test_a_changed_graph_misses(cache_dir, passes_run):
    x, w = kiln.randn(4, 8), kiln.randn(8, 16)
    _call_twice(kiln.compile(_softmax_gelu), x, w)
    _call_twice(kiln.compile(lambda x, w: F.softmax(F.gelu(x @ w, approximate="tanh") * 0.25,
                                                    -1)), x, w)
    _call_twice(kiln.compile(_softmax_gelu), kiln.randn(3, 8), w)     # another shape
    _call_twice(kiln.compile(_softmax_gelu, backend="numpy"), x, w)   # another target
    assert len(passes_run) == 4 and len(_entries()) == 4


def test_a_changed_compiler_misses(cache_dir, passes_run, monkeypatch):
    x, w = kiln.randn(4, 8), kiln.randn(8, 16)
    _call_twice(kiln.compile(_softmax_gelu), x, w)
    # what an edited pass or code generator does to the key: the fingerprint of kiln's sources
    monkeypatch.setattr(program_cache, "compiler_fingerprint", lambda: "an edited kiln")
    _call_twice(kiln.compile(_softmax_gelu), x, w)
    assert len(passes_run) == 2 and len(_entries()) == 2


def test_huge_constants_are_not_written(cache_dir, passes_run):
    table = np.linspace(0, 1, program_cache.MAX_CONSTANT_ELEMENTS + 1, dtype=np.float32)

    def f(x):
        return x * 2 + kiln.tensor(table)        # made inside: baked in as a constant
    x = kiln.randn(table.size)
    for _ in range(2):
        np.testing.assert_allclose(_call_twice(kiln.compile(f), x).numpy(),
                                   x.numpy() * 2 + table, rtol=1e-6)
    assert len(passes_run) == 2 and not (cache_root() / "programs").exists()


def test_a_schedule_class_with_an_unknown_field_is_not_written(cache_dir, monkeypatch):
    # as if fusion.FusedKernel had grown a field this module would silently drop
    fields = dict(program_cache._FIELDS)
    fields[program_cache.FusedKernel] = fields[program_cache.FusedKernel][:-1]
    monkeypatch.setattr(program_cache, "_FIELDS", fields)
    x, w = kiln.randn(4, 8), kiln.randn(8, 16)
    np.testing.assert_allclose(_call_twice(kiln.compile(_softmax_gelu), x, w).numpy(),
                               _softmax_gelu(x, w).numpy(), rtol=1e-5, atol=1e-6)
    assert not (cache_root() / "programs").exists()


def _corrupt(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    path.write_bytes(bytes(raw))


def _rewrite_payload(path, edit):
    """An entry whose checksum matches but whose content is wrong (a stale or foreign one)."""
    header, _, payload = path.read_bytes().partition(b"\n")
    head, _, rest = payload.partition(b"\n")
    doc = json.loads(head)
    edit(doc)
    key = json.loads(header)["key"]
    program_cache._store().put("programs", key, json.dumps(doc).encode() + b"\n" + rest)


def _drop_forward_graph(doc):
    doc["forward"]["graph"] = {}


def _wrong_input_shapes(doc):
    doc["forward"]["graph"]["inputs"][0][0]["shape"] = [5, 5]


def _unknown_step_kind(doc):
    doc["layouts"]["forward"]["steps"][0]["kind"] = "teleport"


def _missing_kernel(doc):
    next(s for s in doc["layouts"]["forward"]["steps"] if s["kind"] == "c").pop("kernel")


def _slot_out_of_range(doc):
    doc["layouts"]["forward"]["steps"][-1]["outs"][0] = len(doc["layouts"]["forward"]["refs"])


def _buffer_not_planned(doc):
    step = next(s for s in doc["layouts"]["forward"]["steps"] if s["kind"] == "c")
    step["buffers"][0] = len(doc["layouts"]["forward"]["buffer_bytes"])


def _input_slot_missing(doc):
    doc["layouts"]["forward"]["input_slots"].pop()


DAMAGES = {"decoding": _drop_forward_graph, "shapes": _wrong_input_shapes,
           "step": _unknown_step_kind, "kernel": _missing_kernel, "slot": _slot_out_of_range,
           "inputs": _input_slot_missing, "buffer": _buffer_not_planned}


@pytest.mark.parametrize("damage", ["bytes", "truncated", "no rest", *DAMAGES])
def test_a_damaged_entry_is_rebuilt_silently(cache_dir, passes_run, damage):
    x, w = kiln.randn(4, 8), kiln.randn(8, 16)
    _call_twice(kiln.compile(_softmax_gelu), x, w)
    (path,) = _entries()
    if damage == "bytes":
        _corrupt(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "no rest":                       # checksummed, but only the head
        header, _, payload = path.read_bytes().partition(b"\n")
        program_cache._store().put("programs", json.loads(header)["key"],
                                   payload.partition(b"\n")[0])
    else:
        _rewrite_payload(path, DAMAGES[damage])
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no message: a rebuild is routine
        again = kiln.compile(_softmax_gelu)
        np.testing.assert_allclose(again(x, w).numpy(), _softmax_gelu(x, w).numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert len(passes_run) == 2
    (entry,) = again.entries.values()
    assert entry.program is not None and entry.schedule is not None
    _call_twice(kiln.compile(_softmax_gelu), x, w)  # the rebuilt entry is whole again
    assert len(passes_run) == 2


def test_a_training_step_with_backward_reads_the_cache(cache_dir, passes_run):
    def make():
        kiln.manual_seed(0)
        w = kiln.randn(6, 3).requires_grad_()
        return w, lambda x: (F.gelu(x @ w) * 2).softmax(-1)
    x = kiln.randn(5, 6)
    results = []
    for _ in range(2):
        w, fn = make()
        compiled = kiln.compile(fn)
        for _ in range(2):
            out = compiled(x)
            (out * out).sum().backward()
        results.append((out.detach().numpy(), w.grad.numpy()))
        (entry,) = compiled.entries.values()
        assert entry.backward is not None and entry.partition is not None
        results.append(str(entry.partition))
    assert len(passes_run) == 1
    w, fn = make()
    want = fn(x)
    (want * want).sum().backward()
    want2 = fn(x)
    (want2 * want2).sum().backward()
    for out, grad in (results[0], results[2]):
        np.testing.assert_allclose(out, want2.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, w.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert results[1] == results[3]


def _round_trip(compiled, traced):
    """`compiled` written as an entry's two halves and read back (the second when first used)."""
    head, rest = program_cache._encode(compiled)
    later = program_cache._Later(json.dumps(rest).encode())
    return program_cache._decode(json.loads(json.dumps(head)), later, traced)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_programs_survive_the_round_trip(name):
    """Every program of the tracer's corpus decodes to the graphs, statistics, schedule and
    partition it was encoded from."""
    kiln.manual_seed(0)
    fn, args = CASES[name]()
    captured = kiln.compiler.trace(fn, *args)
    for traced in captured.graphs:
        compiled = pipeline.compile_passes(traced)
        back = _round_trip(compiled, traced)
        for a, b in ((compiled.forward, back.forward),):
            assert a.graph.structure() == b.graph.structure() and str(a.graph) == str(b.graph)
            assert a.stats == b.stats
            assert str(a.schedule) == str(b.schedule)
            assert a.schedule.graph.structure() == b.schedule.graph.structure()
            for ka, kb in zip(a.schedule.kernels, b.schedule.kernels):
                assert ka.subgraph.structure() == kb.subgraph.structure()
                assert str(ka.subgraph) == str(kb.subgraph)


@needs_cc
@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_lowered_programs_survive_the_round_trip(name, cache_dir):
    """Every lowered C program of the corpus decodes to the steps, kernels, slots, frees and
    memory plan it was encoded from, and runs to the same results."""
    from kiln.codegen.lower import lower_schedule
    from kiln.runtime.schedule_executor import ScheduleExecutor
    kiln.manual_seed(0)
    fn, args = CASES[name]()
    captured = kiln.compiler.trace(fn, *args)
    for traced in captured.graphs:
        compiled = pipeline.compile_passes(traced, lower=functools.partial(lower_schedule,
                                                                            target="c"))
        lowered = compiled.forward.lowered
        head, nodes = program_cache._encode_lowered(lowered)
        later = program_cache._Later(json.dumps({"forward": {"lowered": nodes}}).encode())
        back = program_cache._decode_lowered(json.loads(json.dumps(head)), later, "forward",
                                             lowered.graph)
        assert program_cache._encode_lowered(back) == (head, nodes)
        assert str(back) == str(lowered) and back.memory_text() == lowered.memory_text()
        for a, b in zip(lowered.steps, back.steps):
            if a.kind == "c":       # the kernel's subgraph, for the trials, read when first used
                assert str(a.graph) == str(b.graph)
        a_ex, b_ex = ScheduleExecutor(lowered).wait(), ScheduleExecutor(back).wait()
        assert a_ex.module_source == b_ex.module_source
        assert [st[0] for st in a_ex.steps] == [st[0] for st in b_ex.steps]
        # the same inputs (halves, and index 0) give the same results, bit for bit
        # (fresh ones per run: an update may be computed into its input's memory)
        def inputs():
            return [np.full(v.shape, 0.5 if v.dtype.is_floating_point else 0, v.dtype.np)
                    for v in lowered.graph.inputs]
        (a_out, a_new), (b_out, b_new) = a_ex.run(inputs()), b_ex.run(inputs())
        for a, b in zip(a_out + a_new, b_out + b_new):
            np.testing.assert_array_equal(a, b)


def test_joint_programs_survive_the_round_trip():
    from kiln.tracer.joint import trace_joint
    w = kiln.randn(6, 3).requires_grad_()
    joint, info = trace_joint(lambda x: (F.gelu(x @ w) * 2).softmax(-1), kiln.randn(5, 6))
    compiled = pipeline.compile_passes(joint, info)
    back = _round_trip(compiled, joint)
    for a, b in ((compiled.forward, back.forward), (compiled.backward, back.backward)):
        assert str(a.graph) == str(b.graph) and str(a.schedule) == str(b.schedule)
    assert str(back.partition) == str(compiled.partition)
    assert back.partition.saved == compiled.partition.saved
    assert back.partition.recomputed == compiled.partition.recomputed


NEW_PROCESS = """\
import numpy as np, kiln
from kiln.passes import pipeline
runs = []
real = pipeline.compile_passes
pipeline.compile_passes = lambda *a, **k: runs.append(1) or real(*a, **k)

@kiln.compile
def f(x):
    return (x * 1.5).tanh().softmax(-1) + x

x = kiln.from_numpy(np.linspace(-2, 2, 24, dtype=np.float32).reshape(4, 6))
got = f(x)
np.testing.assert_allclose(got.numpy(), ((x * 1.5).tanh().softmax(-1) + x).numpy(), rtol=1e-6)
assert next(iter(f.entries.values())).program is not None
import sys
print(len(runs), "networkx" in sys.modules)
"""


def test_a_new_process_reads_the_cache(tmp_path):
    env = {**os.environ, "KILN_CACHE_DIR": str(tmp_path)}
    script = tmp_path / "compile_f.py"
    script.write_text(NEW_PROCESS)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(out.stdout.split()[-2:])
    # the second process reads the cache; neither imports networkx (only a joint graph's
    # min-cut partition does, ~0.1 s)
    assert runs == [["1", "False"], ["0", "False"]]


def test_an_entry_is_a_checked_json_document(cache_dir):
    _call_twice(kiln.compile(_softmax_gelu), kiln.randn(4, 8), kiln.randn(8, 16))
    (path,) = _entries()
    header, _, payload = path.read_bytes().partition(b"\n")
    head, _, rest = payload.partition(b"\n")
    doc = json.loads(head)
    assert doc["format"] == program_cache.FORMAT and json.loads(header)["key"] == doc["key"]
    assert sorted(doc) == ["backward", "format", "forward", "key", "layouts", "partition"]
    assert sorted(json.loads(rest)) == ["backward", "forward"]


def _adam_step():
    """A small MLP + Adam training step with cross-entropy: its schedule has matmuls, views,
    C kernels, a kernel split around a `take` call, and an `index_add` on the array executor."""
    kiln.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    opt = kiln.optim.Adam(model.parameters(), lr=1e-2)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()
    return model, step


def test_a_warm_training_step_replays_a_cold_compile(cache_dir, passes_run, monkeypatch):
    # the generated kernels on every replay: a group that the trial replays move to NumPy (by
    # timing, so not alike in both rounds) would change the last bits and the step kinds
    monkeypatch.setenv("KILN_KERNEL_CHOICE", "c")
    x, y = kiln.randn(8, 12), kiln.tensor([0, 4, 1, 3, 2, 2, 0, 1])
    runs = []
    for _ in range(2):
        model, step = _adam_step()
        compiled = kiln.compile(step)
        losses = [compiled(x, y).numpy() for _ in range(4)]
        runs.append((losses, [p.detach().numpy().copy() for p in model.parameters()], compiled))
        passes = len(passes_run)
    assert passes >= 1 and len(passes_run) == passes      # the second round ran no pass
    (cold_losses, cold_params, cold), (warm_losses, warm_params, warm) = runs
    for a, b in zip(cold_losses + cold_params, warm_losses + warm_params):
        np.testing.assert_array_equal(a, b)                 # the same kernels, in the same order
    a, b = list(cold.entries.values())[-1], list(warm.entries.values())[-1]
    assert a.executor.module_source == b.executor.module_source
    kinds = [step[0] for step in b.executor.steps]
    assert {"c", "matmul", "view", "array"} <= set(kinds)
    assert kinds == [step[0] for step in a.executor.steps]
    assert program_cache._encode_lowered(a.executor.rendered) == \
        program_cache._encode_lowered(b.executor.rendered)
    assert (a.executor.free, a.executor.output_slots, a.executor._into) == \
        (b.executor.free, b.executor.output_slots, b.executor._into)
    # running it needed neither the programs' nodes nor the schedule's steps (which outputs a
    # replay copies comes from the cached `output_roots`); read now, they are the cold
    # compile's, and so are the roots
    assert "nodes" not in vars(b.graph) and "steps" not in vars(b.schedule)
    assert b.compiled.forward.output_roots == compiler.outputs.output_roots(b.graph) == \
        a.compiled.forward.output_roots
    assert str(a.graph) == str(b.graph) and str(a.schedule) == str(b.schedule)
    assert a.schedule.graph.structure() == b.schedule.graph.structure()


@needs_cc
def test_a_warm_executor_whose_build_fails_runs_on_numpy(cache_dir, monkeypatch):
    x, w = kiln.randn(4, 8), kiln.randn(8, 16)
    _call_twice(kiln.compile(_softmax_gelu), x, w)
    c_build.clear_memory_cache()

    def fail(build):
        raise c_build.BuildError("simulated")
    monkeypatch.setattr(c_build, "load", fail)
    warm = kiln.compile(_softmax_gelu)
    warm(x, w)
    with pytest.warns(UserWarning, match="building the C kernels .* failed"):
        out = warm(x, w)
    np.testing.assert_allclose(out.numpy(), _softmax_gelu(x, w).numpy(), rtol=1e-5, atol=1e-6)
    (entry,) = warm.entries.values()
    assert "c" not in {kind for kind, *_ in entry.executor.steps}


def test_the_sources_fingerprint_follows_every_source_file(tmp_path):
    (tmp_path / "passes").mkdir()
    (tmp_path / "__pycache__").mkdir()
    source = tmp_path / "passes" / "fusion.py"
    source.write_text("x = 1\n")
    (tmp_path / "ops.py").write_text("y = 2\n")
    seen = {program_cache.sources_fingerprint(str(tmp_path), ["v1"])}
    (tmp_path / "__pycache__" / "ops.cpython-311.py").write_text("")  # not a source
    (tmp_path / "notes.txt").write_text("")
    assert program_cache.sources_fingerprint(str(tmp_path), ["v1"]) in seen
    seen.add(program_cache.sources_fingerprint(str(tmp_path), ["v2"]))
    source.write_text("x = 10\n")                                       # an edit, deep down
    seen.add(program_cache.sources_fingerprint(str(tmp_path), ["v1"]))
    os.utime(source, ns=(0, 12345))                                     # a touch
    seen.add(program_cache.sources_fingerprint(str(tmp_path), ["v1"]))
    (tmp_path / "passes" / "new.py").write_text("")                    # a new file
    seen.add(program_cache.sources_fingerprint(str(tmp_path), ["v1"]))
    assert len(seen) == 5


def _mul_graph(literal, name="x", loc="f.py:1"):
    from kiln.ir import dtypes as dt
    from kiln.ir.graph import Graph
    g = Graph("f")
    x = g.add_input((3,), dt.float32, name)
    g.outputs = [g.add_node("mul", (x, literal), {}, (3,), dt.float32, loc)]
    return g


def test_the_key_tells_literals_names_and_lines_apart():
    key = program_cache.program_key
    assert key(_mul_graph(2), None, "c") == key(_mul_graph(2), None, "c")
    keys = {key(_mul_graph(2), None, "c"), key(_mul_graph(2.0), None, "c"),
            key(_mul_graph(True), None, "c"), key(_mul_graph(2, name="y"), None, "c"),
            key(_mul_graph(2, loc="f.py:2"), None, "c"), key(_mul_graph(2), None, "numpy")}
    assert len(keys) == 6
    # a literal marshal cannot write (a NumPy scalar) still gives a key, the same each time
    assert key(_mul_graph(np.float64(2.0)), None, "c") == \
        key(_mul_graph(np.float64(2.0)), None, "c")


def test_cache_artifacts_carry_compiled_programs_to_another_cache(tmp_path, passes_run,
                                                                  monkeypatch):
    """torch.compiler.save_cache_artifacts / load_cache_artifacts (the compile caching
    recipe's mega-cache): the programs compiled with one cache directory, loaded into an empty
    one, are read from there by the next compile (no pass runs), with eager's results."""
    import inspect

    import torch
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("KILN_CACHE_DIR", str(first))
    monkeypatch.setattr(program_cache, "USED", {})
    c_build.clear_memory_cache()
    assert kiln.compiler.save_cache_artifacts() is None       # as torch's before any compile
    for name in ("save_cache_artifacts", "load_cache_artifacts"):    # torch's signatures
        assert list(inspect.signature(getattr(kiln.compiler, name)).parameters) == \
            list(inspect.signature(getattr(torch.compiler, name)).parameters)
    x, w = kiln.randn(4, 8), kiln.randn(8, 16)
    want = _softmax_gelu(x, w).numpy()
    _call_twice(kiln.compile(_softmax_gelu), x, w)
    artifacts, info = kiln.compiler.save_cache_artifacts()
    assert isinstance(artifacts, bytes) and len(info.compiled_program_artifacts) == 1
    assert info.inductor_artifacts == [] and not info.empty()

    monkeypatch.setenv("KILN_CACHE_DIR", str(second))
    c_build.clear_memory_cache()
    loaded = kiln.compiler.load_cache_artifacts(artifacts)
    assert loaded.compiled_program_artifacts == info.compiled_program_artifacts
    np.testing.assert_allclose(_call_twice(kiln.compile(_softmax_gelu), x, w).numpy(), want,
                               rtol=1e-5, atol=1e-6)
    assert passes_run == ["_softmax_gelu"]          # only the first directory's compile
    c_build.clear_memory_cache()
    with pytest.raises(ValueError, match="not what save_cache_artifacts returned"):
        kiln.compiler.load_cache_artifacts(b"\x80not json")


@needs_cc
def test_a_bfloat16_program_reads_back_with_its_dtypes(cache_dir, passes_run):
    """bfloat16 dtypes are stored by name: ml_dtypes' array-protocol string '<V2' read back as
    2 bytes of no type, and the kernels' input conversion failed ("No cast function
    available"), so a bfloat16 step compiled a second time ran eagerly."""
    x = kiln.tensor(np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32))
    losses = []
    for _ in range(2):
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(kiln.bfloat16)
        opt = kiln.optim.SGD(model.parameters(), lr=0.05)

        def step():
            opt.zero_grad()
            loss = model(x.to(kiln.bfloat16)).float().pow(2).mean()
            loss.backward()
            opt.step()
            return loss
        compiled = kiln.compile(step, backend="c")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            losses.append([compiled().item() for _ in range(3)])
        (entry,) = compiled.entries.values()
        assert entry.program is not None
        assert kiln.bfloat16.np_dtype in entry.executor.program.dtypes
        assert "void16" not in [d.name for d in entry.executor.program.dtypes]
    assert len(passes_run) == 1 and losses[0] == losses[1]
