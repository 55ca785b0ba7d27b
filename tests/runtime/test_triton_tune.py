"""Launch configurations settled on the GPU (kiln.runtime.triton_tune), against a fake timer: the
first launch of a kernel times its candidates and keeps the fastest, which later programs and
processes read back from disk without timing; a corrupt file or an entry that does not fit is
ignored; a candidate whose results differ is dropped; nothing is timed while a CUDA graph is
captured, for small kernels, with KILN_TRITON_TUNE=0, or where no GPU name can be read (the fake
CUDA, Triton's interpreter). Results equal eager with the configuration chosen. GPU-marked:
skipped without a GPU, and run on the CPU under the strict fake CUDA by tests/test_fake_cuda.py
(the timer and the GPU's name are the test's own there and on a GPU)."""

import json

import numpy as np
import pytest

import kiln
import kiln.nn.functional as F
from kiln.codegen.triton import tuning_candidates
from kiln.runtime import triton_launch, triton_tune

N = 5000                    # elements: 2 blocks of 4096 at most, the last one partial
FAST = (2048, 8)            # the candidate the fake timer makes fastest


def _fn(x, y):
    return F.gelu(x * y + 0.5)


class FakeTimer:
    """Runs each candidate once and says it took 1 ms, or 0.5 ms for `fast`."""

    def __init__(self, fast=FAST):
        self.fast, self.timed = fast, []

    def __call__(self, tk, run):
        run()
        self.timed.append(tk.config)
        return 0.5 if tk.config == self.fast else 1.0


@pytest.fixture
def timer(monkeypatch, tmp_path):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_CUDA_GRAPHS", "0")         # plain launches; graphs: a test below
    monkeypatch.delenv("KILN_TRITON_TUNE", raising=False)
    monkeypatch.setattr(triton_tune, "TUNED_CONFIGS", {})
    monkeypatch.setattr(triton_tune, "_loaded", [False])
    monkeypatch.setattr(triton_tune, "TUNINGS", {})
    monkeypatch.setattr(triton_tune, "gpu_name", lambda: "Fake GPU")
    monkeypatch.setattr(triton_tune, "MIN_BYTES", 0)
    fake = FakeTimer()
    monkeypatch.setattr(triton_tune, "TIMER", fake)
    _wait_for_builds()
    triton_launch.clear_memory_cache()      # no kernel built by another test
    return fake


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [kiln.tensor(rng.standard_normal(N, dtype=np.float32)).cuda() for _ in range(2)]


def _wait_for_builds():
    for future in list(triton_launch._BUILDING.values()):
        future.result()


def _run(inputs):
    """(compiled result, eager result, the compiled program's Triton launchers), its kernels'
    builds (started when the executor is made) finished before the program's first run."""
    compiled = kiln.compile(_fn)
    compiled(*inputs)                   # traces
    _wait_for_builds()
    got = compiled(*inputs)             # the first run of the compiled program
    (entry,) = compiled.entries.values()
    launchers = [s.launcher for s in entry.executor.triton_steps.values()]
    return got.cpu().numpy(), _fn(*inputs).cpu().numpy(), launchers


def _the_launcher(launchers):
    (launcher,) = launchers
    assert isinstance(launcher, triton_launch.CudaKernelLauncher)
    assert launcher.tk.layout == "pointwise" and launcher.tk.numel == N
    return launcher


@pytest.mark.gpu
def test_first_launch_times_the_candidates_and_keeps_the_fastest(timer):
    got, want, launchers = _run(_inputs())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    launcher = _the_launcher(launchers)
    candidates = [(512, 4), (1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8)]
    assert sorted(timer.timed) == candidates                 # each once, the default first
    assert timer.timed[0] == (1024, 4)
    assert launcher.tk.config == FAST and launcher.grid == (3, 1, 1)   # ceil(5000 / 2048)
    assert launcher.tuning.chosen == FAST and not launcher.tuning.cached
    assert "block 2048, 8 warps" in launcher.tuning.describe()
    key = triton_tune.config_key(launcher.tk, "Fake GPU")
    assert json.loads(triton_tune.configs_path().read_text()) == {
        key: {"block": 2048, "num_warps": 8}}
    # later calls launch the chosen configuration: still eager's results, nothing timed
    x, y = _inputs(1)
    compiled_again = kiln.compile(_fn)
    for _ in range(3):
        np.testing.assert_allclose(compiled_again(x, y).cpu().numpy(), _fn(x, y).cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert len(timer.timed) == len(candidates)
    # `kiln dump` and explain list the choice with the program's CUDA graph note
    notes = kiln.compiler.cuda_graph_notes(compiled_again)
    assert f"forward launch configuration {launcher.tk.name}: block 2048, 8 warps (recorded)" \
        in notes


@pytest.mark.gpu
def test_a_later_process_reads_the_choice_back_and_a_bad_file_is_ignored(timer, monkeypatch):
    _run(_inputs())
    timed = len(timer.timed)

    def later_process():
        monkeypatch.setattr(triton_tune, "TUNED_CONFIGS", {})
        monkeypatch.setattr(triton_tune, "_loaded", [False])
    later_process()
    got, want, launchers = _run(_inputs(2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    launcher = _the_launcher(launchers)
    assert len(timer.timed) == timed                         # read back, not timed
    assert launcher.tuning.cached and launcher.tk.config == FAST
    # another GPU's name: its own choice, timed again
    monkeypatch.setattr(triton_tune, "gpu_name", lambda: "Other GPU")
    _run(_inputs())
    assert len(timer.timed) == 2 * timed
    assert len(json.loads(triton_tune.configs_path().read_text())) == 2
    # a corrupt file: ignored, timed again, written whole again
    monkeypatch.setattr(triton_tune, "gpu_name", lambda: "Fake GPU")
    triton_tune.configs_path().write_text("{not json")
    later_process()
    timer.fast = (512, 4)
    got, want, launchers = _run(_inputs())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(timer.timed) == 3 * timed and _the_launcher(launchers).tk.config == (512, 4)
    assert list(json.loads(triton_tune.configs_path().read_text()).values()) == [
        {"block": 512, "num_warps": 4}]
    # an entry no reader can trust (block not a power of two), or one that is not among the
    # kernel's candidates, is never used
    key = triton_tune.config_key(_the_launcher(launchers).tk, "Fake GPU")
    for entry in ({"block": 1000, "num_warps": 4}, {"block": 8192, "num_warps": 2}):
        triton_tune.configs_path().write_text(json.dumps({key: entry}))
        later_process()
        before = len(timer.timed)
        _run(_inputs())
        assert len(timer.timed) == before + timed


@pytest.mark.gpu
def test_a_candidate_with_other_results_is_dropped(timer):
    x, y = _inputs()
    compiled = kiln.compile(_fn)
    monkeypatch_env = pytest.MonkeyPatch()
    monkeypatch_env.setenv("KILN_TRITON_TUNE", "0")         # build the program untuned first
    try:
        compiled(x, y)
        compiled(x, y)
    finally:
        monkeypatch_env.undo()
    (entry,) = compiled.entries.values()
    (step,) = entry.executor.triton_steps.values()
    tk = triton_launch.render(step_graph(entry))
    inputs = [x._data, y._data]            # the device arrays
    outputs = [kiln.tensor(np.zeros(N, np.float32)).cuda()._data]

    def launcher_for(k):
        plain = triton_launch.CudaKernelLauncher(k, tune=False)
        if k.config != FAST:
            return plain

        def wrong(ins, outs):           # the fastest computes something else
            plain(ins, outs)
            outs[0][:7] = 3.0
        return wrong
    chosen, tuning = triton_tune.settle(tk, inputs, outputs, launcher_for)
    assert FAST in dict(tuning.rejected) and "differ" in dict(tuning.rejected)[FAST]
    assert chosen.config == tuning.chosen == (1024, 4)      # the rest tie: the default stays
    assert FAST not in dict(tuning.timings) and len(tuning.timings) == 5


def step_graph(entry):
    """The fused subgraph of the program's one Triton step."""
    (sub,) = [st[4] for st in entry.executor.steps if st[0] == "triton"]
    return sub


@pytest.mark.gpu
def test_nothing_is_timed_during_capture_for_small_kernels_or_when_turned_off(timer,
                                                                                monkeypatch):
    import cupy as cp
    x, y = _inputs()
    monkeypatch.setenv("KILN_TRITON_TUNE", "0")
    compiled = kiln.compile(_fn)
    compiled(x, y)
    np.testing.assert_allclose(compiled(x, y).cpu().numpy(), _fn(x, y).cpu().numpy(),
                               rtol=1e-5, atol=1e-6)
    (entry,) = compiled.entries.values()
    tk = triton_launch.render(step_graph(entry))
    assert timer.timed == [] and not triton_tune.configs_path().exists()
    monkeypatch.delenv("KILN_TRITON_TUNE")
    # a kernel under MIN_BYTES: launch-bound, left as it is
    monkeypatch.setattr(triton_tune, "MIN_BYTES", 3 * N * 4 + 1)
    out = cp.empty(N, np.float32)
    launcher = triton_launch.CudaKernelLauncher(tk)
    launcher([x._data, y._data], [out])
    assert timer.timed == [] and launcher.tuning is None and launcher.tk.config == (1024, 4)
    # while a graph is captured: nothing timed, settled at the next launch outside it
    monkeypatch.setattr(triton_tune, "MIN_BYTES", 0)
    launcher = triton_launch.CudaKernelLauncher(tk)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        launcher([x._data, y._data], [out])
        graph = stream.end_capture()
    assert timer.timed == [] and launcher.tk.config == (1024, 4)
    graph.launch(stream)
    stream.synchronize()
    np.testing.assert_allclose(out.get(), _fn(x, y).cpu().numpy(), rtol=1e-5, atol=1e-6)
    # outside it: the candidates are not built yet, so the kernel launches as it is and their
    # builds start, without waiting; a launch that finds them built settles
    launcher([x._data, y._data], [out])
    assert timer.timed == [] and not launcher.settled and launcher.tk.config == (1024, 4)
    np.testing.assert_allclose(out.get(), _fn(x, y).cpu().numpy(), rtol=1e-5, atol=1e-6)
    _wait_for_builds()
    out[...] = 0
    launcher([x._data, y._data], [out])
    assert len(timer.timed) == 6 and launcher.settled and launcher.tk.config == FAST
    np.testing.assert_allclose(out.get(), _fn(x, y).cpu().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_without_a_gpu_name_the_kernel_keeps_its_own_configuration(timer, monkeypatch):
    monkeypatch.setattr(triton_tune, "gpu_name", lambda: None)
    got, want, launchers = _run(_inputs())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    launcher = _the_launcher(launchers)
    assert timer.timed == [] and launcher.tuning is None and launcher.tk.config == (1024, 4)


@pytest.mark.gpu
def test_the_fake_cuda_has_no_gpu_name():
    # the real function: under the fake CUDA there is no device to name, so nothing is tuned
    import cupy as cp
    if "fake" not in cp.__version__:
        pytest.skip("a real GPU: tests/runtime/test_triton_tune_gpu.py tunes on it")
    assert triton_tune.gpu_name() is None


@pytest.mark.gpu
def test_the_executor_builds_ahead_the_configurations_its_first_launch_needs(timer, monkeypatch):
    def started(compiled) -> tuple:
        """(the program's Triton kernel, the configurations of it built or being built)."""
        (entry,) = compiled.entries.values()
        ((tk, sub),) = [(st[1], st[4]) for st in entry.executor.steps if st[0] == "triton"]
        specs = [(tuple(v.shape), np.dtype(v.dtype.np))
                 for v in list(sub.inputs) + list(sub.outputs)]
        aligned = (True,) * len(specs)
        with triton_launch._LOCK:
            keys = set(triton_launch._COMPILED) | set(triton_launch._BUILDING)
        return tk, {c for c in tuning_candidates(tk)
                    if triton_launch._compiled_key(tk.with_config(*c), aligned, specs) in keys}

    def later_process():
        for future in list(triton_launch._BUILDING.values()):
            future.result()
        triton_launch.clear_memory_cache()
        monkeypatch.setattr(triton_tune, "TUNED_CONFIGS", {})
        monkeypatch.setattr(triton_tune, "_loaded", [False])
    later_process()
    x, y = _inputs()
    compiled = kiln.compile(_fn)
    compiled(x, y)                          # traces; making the executor starts the builds
    tk, built = started(compiled)
    assert built == set(tuning_candidates(tk))              # all: the first launch times them
    _wait_for_builds()      # (on a busy machine the builds may still run: the launch would
    compiled(x, y)          # go on untuned and record nothing)
    later_process()
    compiled = kiln.compile(_fn)
    compiled(x, y)
    assert started(compiled)[1] == {FAST}                   # the recorded one only
    np.testing.assert_allclose(compiled(x, y).cpu().numpy(), _fn(x, y).cpu().numpy(),
                               rtol=1e-5, atol=1e-6)
    assert len(timer.timed) == len(tuning_candidates(tk))


@pytest.mark.gpu
def test_a_graph_is_captured_once_the_kernels_are_settled(timer, monkeypatch):
    import threading
    monkeypatch.setenv("KILN_CUDA_GRAPHS", "1")
    release = threading.Event()
    build = triton_launch._build_kernel

    def slow_build(tk, *args):          # the candidates' builds take until the test says
        if tk.config != (1024, 4):
            assert release.wait(30)
        return build(tk, *args)
    monkeypatch.setattr(triton_launch, "_build_kernel", slow_build)
    compiled = kiln.compile(_fn)
    batches = [_inputs(seed) for seed in range(6)]
    compiled(*batches[0])               # traces; the executor starts the builds
    (entry,) = compiled.entries.values()
    for x, y in batches[1:3]:           # plain runs: the kernel waits for its candidates
        np.testing.assert_allclose(compiled(x, y).cpu().numpy(), _fn(x, y).cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
        assert entry.executor.cuda_graph.graph is None
    ((launcher,),) = [[s.launcher for s in entry.executor.triton_steps.values()]]
    assert not launcher.settled and timer.timed == []
    release.set()
    _wait_for_builds()
    for i, (x, y) in enumerate(batches[3:]):   # settled in a plain run, then captured
        np.testing.assert_allclose(compiled(x, y).cpu().numpy(), _fn(x, y).cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
        assert launcher.settled and launcher.tk.config == FAST
        assert (entry.executor.cuda_graph.graph is not None) == (i > 0)
    assert len(timer.timed) == 6


@pytest.mark.gpu
def test_after_a_few_unsettled_calls_one_waits_for_the_builds_then_the_graph_is_captured(
        timer, monkeypatch):
    import threading

    from kiln.runtime import cuda_graph
    monkeypatch.setenv("KILN_CUDA_GRAPHS", "1")
    monkeypatch.setattr(cuda_graph, "MAX_UNSETTLED_CALLS", 2)
    release = threading.Event()
    build = triton_launch._build_kernel

    def slow_build(tk, *args):
        if tk.config != (1024, 4):
            assert release.wait(30)
        return build(tk, *args)
    monkeypatch.setattr(triton_launch, "_build_kernel", slow_build)
    compiled = kiln.compile(_fn)
    batches = [_inputs(seed) for seed in range(7)]
    compiled(*batches[0])               # traces
    (entry,) = compiled.entries.values()
    graphs = []
    for k, (x, y) in enumerate(batches[1:]):
        if k == 3:                      # this call waits: the builds end while it does
            threading.Timer(0.2, release.set).start()
        np.testing.assert_allclose(compiled(x, y).cpu().numpy(), _fn(x, y).cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
        graphs.append(entry.executor.cuda_graph.graph is not None)
    (launcher,) = [s.launcher for s in entry.executor.triton_steps.values()]
    # warm-up, 2 plain calls waiting, 1 that waits for the builds and times, then the graph
    assert graphs == [False, False, False, False, True, True]
    assert launcher.settled and launcher.tk.config == FAST and len(timer.timed) == 6


@pytest.mark.gpu
def test_prebuild_starts_every_kernels_own_configuration_before_any_candidate(timer,
                                                                              monkeypatch):
    from concurrent.futures import Future

    from kiln.compiler import trace
    order = []

    class Recording:
        def submit(self, fn, tk, *args):
            order.append((tk.name, tk.config))
            done = Future()
            done.set_result(None)
            return done
    monkeypatch.setattr(triton_launch, "_BUILDERS", Recording())
    graphs = [trace(_fn, *[kiln.randn(N)] * 2).graphs[0],
              trace(lambda x: F.softmax(x, -1), kiln.randn(40, 500)).graphs[0]]
    kernels = [(triton_launch.render(g), g) for g in graphs]
    triton_launch.prebuild(kernels)
    (a, _), (b, _) = kernels
    assert order[:2] == [(a.name, a.config), (b.name, b.config)]
    assert sorted(order[2:]) == sorted(
        [(a.name, c) for c in tuning_candidates(a)[1:]] +
        [(b.name, c) for c in tuning_candidates(b)[1:]])
    triton_launch.clear_memory_cache()
