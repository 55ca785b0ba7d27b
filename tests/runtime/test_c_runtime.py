"""The C runtime: shared objects cached on disk (corrupt entries rebuilt, keys that follow the
source, compiler and flags), builds that fail fall back to NumPy per kernel, a machine without a
C compiler still runs compiled functions on the NumPy executor with one message,
`kiln.set_num_threads` reaches OpenMP, and write-backs land in the caller's arrays unless another
input shares their memory."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln import compiler
from kiln.compiler import lower_program
from kiln.codegen.c import c_module, render_c
from kiln.codegen.kernel import lower
from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph
from kiln.passes.fusion import fuse
from kiln.runtime import c_build
from kiln.runtime.executor import ArrayExecutor
from kiln.runtime.schedule_executor import ScheduleExecutor
from tests.codegen.cases import BY_NAME

ROOT = Path(__file__).resolve().parents[2]
needs_cc = pytest.mark.skipif(c_build.compiler_problem() is not None,
                              reason="needs a working C compiler with OpenMP")


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    c_build.clear_memory_cache()
    yield tmp_path
    c_build.clear_memory_cache()


def _source(name="softmax") -> str:
    return c_module([render_c(lower(BY_NAME[name].graph()))])


def _softmax(lib, x):
    out = np.empty_like(x)
    fn = c_build.kernel_function(lib, "fused_max_sub_exp_sum_div", 2)
    fn(x.ctypes.data, out.ctypes.data)
    return out


@needs_cc
def test_a_build_nobody_waits_for_is_finished_at_exit(tmp_path):
    # the process starts a C build and exits: the shared object still reaches the cache, and
    # neither a temporary file nor a warning about a running compiler is left behind
    code = ("import warnings; warnings.simplefilter('error')\n"
            "from kiln.runtime import c_build\n"
            "b = c_build.start_build('int kiln_probe_exit(void) { return 7; }\\n')\n"
            "print(b.key)\n")
    env = {**os.environ, "KILN_CACHE_DIR": str(tmp_path), "PYTHONWARNINGS": "error"}
    done = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    key = done.stdout.split()[-1]
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert any(name.endswith(".so") and key in name for name in files), files
    assert not any(name.endswith(".so.tmp") for name in files), files
    lib = ctypes.CDLL(str(next(p for p in tmp_path.rglob("*.so") if key in p.name)))
    assert lib.kiln_probe_exit() == 7


@needs_cc
def test_cold_build_then_warm_hit_then_corrupt_entry_rebuilt(cache_dir, monkeypatch):
    source = _source()
    path = c_build.build(source)
    key = c_build.cache_key(source)
    assert path.name == f"{key}.so" and path.with_suffix(".json").exists()
    assert path.with_suffix(".c").read_text() == source        # the source, for reading
    x = np.random.default_rng(0).standard_normal((5, 37)).astype(np.float32)
    want = np.exp(x - x.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(_softmax(c_build.load(c_build.start_build(source)), x), want,
                               rtol=1e-5)

    def no_compiler(*args, **kwargs):
        raise AssertionError("a cache hit must not run the compiler")
    with monkeypatch.context() as m:
        m.setattr(subprocess, "Popen", no_compiler)
        assert c_build.build(source) == path
    for damage in (lambda raw: raw[: len(raw) // 2],                  # half-written
                   lambda raw: raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]):   # one bit
        # a new file over the old name: the loaded library keeps its pages (writing into a
        # mapped file in place would crash this process)
        damaged = path.with_name("damaged.tmp")
        damaged.write_bytes(damage(path.read_bytes()))
        os.replace(damaged, path)
        assert c_build.cached(key) is None                           # never trusted
        assert c_build.build(source) == path                          # rebuilt
        assert c_build.cached(key) == path
    path.with_suffix(".json").write_text("{not json")
    assert c_build.cached(key) is None


def test_key_follows_source_compiler_and_flags(monkeypatch):
    a, b = _source("softmax"), _source("layer_norm")
    assert c_build.cache_key(a) != c_build.cache_key(b)
    key = c_build.cache_key(a)
    monkeypatch.setattr(c_build, "FLAGS", c_build.FLAGS + ("-DKILN_TEST",))
    assert c_build.cache_key(a) != key
    monkeypatch.undo()
    monkeypatch.setattr(c_build, "compiler_identity", lambda cc=None: "/usr/bin/other-cc:1:2")
    assert c_build.cache_key(a) != key


@needs_cc
@pytest.mark.parametrize("extra", ["-O2", "-O2 -DKILN_NOTE='a b'"])
def test_cc_with_arguments_builds_as_make_would(cache_dir, monkeypatch, extra):
    # CC='gcc -O2' names a compiler and its arguments; taken as one program name it was "not
    # found" and silently turned the C backend off
    cc = c_build.compiler_argv()[0]
    plain_key = c_build.cache_key(_source())
    monkeypatch.setenv("CC", f"{cc} {extra}")
    c_build.clear_memory_cache()
    assert c_build.compiler_problem() is None
    assert c_build.cache_key(_source()) != plain_key      # its arguments can change the code
    lib = c_build.load(c_build.start_build(_source()))
    x = np.random.default_rng(0).standard_normal((5, 37)).astype(np.float32)   # the case's
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(_softmax(lib, x), e / e.sum(-1, keepdims=True), rtol=1e-5,
                               atol=1e-7)
    assert compiler.kernel_target("auto", kiln.ones(1).device) == "c"


@needs_cc
def test_failed_build_runs_the_kernels_on_numpy(cache_dir, monkeypatch):
    from kiln.codegen import c as cgen
    real = cgen.c_module
    monkeypatch.setattr(cgen, "c_module", lambda *a: real(*a) + "\n#error simulated bug\n")
    cf = kiln.compile(lambda x: (x * 3).exp().softmax(-1), backend="c")
    x = kiln.randn(4, 6)
    cf(x)
    with pytest.warns(UserWarning, match="building the C kernels .* failed"):
        out = cf(x)
    np.testing.assert_allclose(out.numpy(), (x * 3).exp().softmax(-1).numpy(), rtol=1e-6)
    (entry,) = cf.entries.values()
    assert all(kind == "array" for kind, *_ in entry.executor.steps)


def test_no_compiler_falls_back_to_numpy_with_one_message(cache_dir, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent")
    monkeypatch.setattr(compiler.pipeline, "_NO_COMPILER_NOTED", [])
    f1 = kiln.compile(lambda x: (x * 2).tanh().sum(-1))
    f2 = kiln.compile(lambda x: x.softmax(-1) + 1)
    x = kiln.randn(3, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            np.testing.assert_allclose(f1(x).numpy(), (x * 2).tanh().sum(-1).numpy(), rtol=1e-6)
            np.testing.assert_allclose(f2(x).numpy(), (x.softmax(-1) + 1).numpy(), rtol=1e-6)
    messages = [str(w.message) for w in caught if "C compiler" in str(w.message)]
    assert len(messages) == 1 and "/nonexistent" in messages[0] and "NumPy" in messages[0]
    for f in (f1, f2):
        (entry,) = f.entries.values()
        assert isinstance(entry.executor, ArrayExecutor) and entry.calls == 2


def test_no_compiler_in_a_fresh_process(tmp_path):
    code = ("import numpy as np, kiln\n"
            "f = kiln.compile(lambda x: (x * 1.5).tanh() + x.softmax(-1))\n"
            "x = kiln.randn(4, 7)\n"
            "for _ in range(3):\n"
            "    np.testing.assert_allclose(f(x).numpy(), ((x * 1.5).tanh() + x.softmax(-1))"
            ".numpy(), rtol=1e-6)\n"
            "print('ok', type(list(f.entries.values())[0].executor).__name__)\n")
    env = {**os.environ, "CC": "/nonexistent", "KILN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "ArrayExecutor"]
    assert done.stderr.count("no working C compiler") == 1


@needs_cc
def test_auto_uses_c_kernels_on_the_cpu(cache_dir):
    cf = kiln.compile(lambda x: kiln.softmax(x * 2, -1))
    x = kiln.randn(3, 9)
    cf(x)
    np.testing.assert_allclose(cf(x).numpy(), kiln.softmax(x * 2, -1).numpy(), rtol=1e-6)
    (entry,) = cf.entries.values()
    assert isinstance(entry.executor, ScheduleExecutor) and entry.executor.target == "c"
    assert [kind for kind, *_ in entry.executor.steps] == ["c"]
    assert "#pragma omp" in entry.executor.module_source


@needs_cc
def test_set_num_threads_reaches_openmp(cache_dir):
    pytest.importorskip("threadpoolctl")
    lib = c_build.load(c_build.start_build(
        "#include <omp.h>\nint max_threads(void) { return omp_get_max_threads(); }\n"))
    lib.max_threads.restype = ctypes.c_int
    before = kiln.get_num_threads()
    try:
        kiln.set_num_threads(1)
        assert lib.max_threads() == 1
        kiln.set_num_threads(2)
        assert lib.max_threads() == 2
    finally:
        kiln.set_num_threads(before)


@needs_cc
def test_write_backs_are_computed_over_the_callers_arrays(cache_dir):
    g = Graph("update")
    p = g.add_input((64,), dt.float32, "p")
    q = g.add_input((64,), dt.float32, "q")
    half = g.add_node("mul", (p, 0.5), {}, (64,), dt.float32)
    g.mutations = [(p, g.add_node("add", (half, q), {}, (64,), dt.float32))]
    g.outputs = [g.add_node("mul", (q, 3.0), {}, (64,), dt.float32)]
    ex = ScheduleExecutor(lower_program(fuse(g), "c")).wait()
    assert "*restrict p_ptr" not in ex.module_source        # p is read and written over

    def run(pa, qa):
        want = pa * np.float32(0.5) + qa
        outs, (new,) = ex.run([pa, qa])
        np.testing.assert_array_equal(new, want)
        np.testing.assert_array_equal(outs[0], qa * np.float32(3))
        return new

    rng = np.random.default_rng(0)
    pa, qa = rng.standard_normal((2, 64), dtype=np.float32)
    assert run(pa, qa.copy()) is pa
    # q shares p's memory, or p is strided: the new value goes to fresh memory
    base = rng.standard_normal(64, dtype=np.float32)
    new = run(base, base[::-1])
    assert new is not base and base[0] != new[0]
    strided = rng.standard_normal(128, dtype=np.float32)[::2]
    assert run(strided, qa) is not strided


@needs_cc
def test_outputs_go_into_the_callers_arrays_when_asked(cache_dir):
    g = Graph("grads")
    a = g.add_input((8, 4), dt.float32, "a")
    b = g.add_input((8, 6), dt.float32, "b")
    at = g.add_node("permute", (a,), {"perm": (1, 0)}, (4, 8), dt.float32)
    g.outputs = [g.add_node("matmul", (at, b), {}, (4, 6), dt.float32),    # an extern
                 g.add_node("mul", (a, 2.0), {}, (8, 4), dt.float32)]      # a kernel
    ex = ScheduleExecutor(lower_program(fuse(g), "c")).wait()
    rng = np.random.default_rng(0)
    aa, ba = rng.standard_normal((8, 4), dtype=np.float32), rng.standard_normal((8, 6),
                                                                               dtype=np.float32)
    into = {0: np.empty((4, 6), np.float32), 1: np.empty((8, 4), np.float32)}
    outs, _ = ex.run([aa, ba], into)
    assert outs[0] is into[0] and outs[1] is into[1]
    np.testing.assert_allclose(outs[0], aa.T @ ba, rtol=1e-5)
    np.testing.assert_array_equal(outs[1], aa * np.float32(2))
    # an array the program still reads, or of another dtype, is left alone
    wrong = {1: aa, 0: np.empty((4, 6), np.float64)}
    outs, _ = ex.run([aa, ba], wrong)
    assert outs[1] is not aa and outs[0] is not wrong[0]
    np.testing.assert_array_equal(outs[1], aa * np.float32(2))


@needs_cc
def test_a_compiled_step_writes_gradients_into_the_existing_grads(cache_dir):
    kiln.manual_seed(0)
    w = kiln.randn(5, 3, requires_grad=True)
    x = kiln.randn(4, 3)

    def step(x):
        w.grad = None
        loss = (x @ w.T).tanh().sum()
        loss.backward()
        return loss.detach()
    cf = kiln.compile(step)
    for _ in range(3):
        cf(x)
    entry = max(cf.entries.values(), key=lambda e: e.calls)       # the steady state's
    run, returned = entry.executor.run, []
    entry.executor.run = lambda *a: returned.append(run(*a)) or returned[-1]
    before = w.grad._data
    cf(x)
    (outs, _), = returned
    assert w.grad._data is before and any(o is before for o in outs)   # no copy made
    wn = w.detach().numpy()
    want = (1 - np.tanh(x.numpy() @ wn.T) ** 2).T @ x.numpy()
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-5, atol=1e-6)


@needs_cc
def test_no_write_over_the_callers_arrays_before_a_step_that_may_raise(cache_dir):
    g = Graph("update_then_gather")
    p = g.add_input((6,), dt.float32, "p")
    idx = g.add_input((3,), dt.int64, "idx")
    g.mutations = [(p, g.add_node("mul", (p, 0.5), {}, (6,), dt.float32))]
    q = g.add_input((6,), dt.float32, "q")
    g.outputs = [g.add_node("take", (q, idx), {"axis": 0}, (3,), dt.float32)]
    ex = ScheduleExecutor(lower_program(fuse(g, gathers=False), "c")).wait()
    assert [kind for kind, *_ in ex.steps] == ["c", "array"]
    pa = np.arange(6, dtype=np.float32)
    with pytest.raises(IndexError):
        ex.run([pa, np.array([0, 9, 1]), np.ones(6, np.float32)])
    np.testing.assert_array_equal(pa, np.arange(6))      # a rerun in eager mode sees it intact


@needs_cc
def test_an_unusable_cache_directory_does_not_turn_c_off_for_later_ones(tmp_path, monkeypatch):
    # the probe's answer depends on where builds go: a failure under one cache directory (a
    # path under a regular file) must not be remembered for the compiler everywhere
    blocker = tmp_path / "file"
    blocker.write_text("")
    c_build.clear_memory_cache()
    monkeypatch.setenv("KILN_CACHE_DIR", str(blocker / "cache"))
    assert c_build.compiler_problem() is not None
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "usable"))
    assert c_build.compiler_problem() is None
    assert compiler.kernel_target("auto", kiln.ones(1).device) == "c"
FORK_SCRIPT = """
import os
import numpy as np
import kiln
kiln.set_num_threads(2)                     # the parent runs kernels on a team of 2
x = kiln.from_numpy(np.random.default_rng(0).normal(size=(1000, 600)).astype(np.float32))
# 600k elements of tanh: past the size a generated loop is shared among threads
f = kiln.compile(lambda x: (x * 0.5).tanh() + 1.0, backend="c")
for _ in range(3):
    want = f(x).numpy().copy()
assert f.programs(), "the function did not compile"
pid = os.fork()
if pid == 0:
    import signal
    signal.alarm(30)                        # a hung child must not outlive the test
    got = f(x).numpy()
    os._exit(0 if np.allclose(got, want, rtol=1e-6) else 3)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@needs_cc
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_runs_compiled_kernels_without_hanging():
    """GNU OpenMP cannot start a team in a child forked after the parent's threads started (a
    DataLoader worker calling a compiled model): the child runs the kernels on one thread."""
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                         timeout=90, check=True, cwd=ROOT,
                         env={**os.environ, "KILN_KERNEL_CHOICE": "c"})
    assert out.stdout.split() == ["0"], out.stderr
