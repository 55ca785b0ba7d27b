"""kiln eager vs kiln compiled (auto backend: C kernels on the CPU) vs PyTorch eager vs
torch.compile (Inductor, CPU), side by side in one process.

Run: python benchmarks/compile_cpu.py [--quick] [--no-inductor] [--first-calls]
Prints first-call compile times (cold: empty kernel cache; warm: a new process reading the disk
cache), then median milliseconds per call and ratios for two sets of sizes (issue 6's and issue
7's), two training steps (an MLP with Adam, the digits CNN with SGD) and the per-call time of a
compiled function on a 21-op chain of 16 floats. `--quick` divides the sizes by 8 and takes
fewer repeats.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import kiln
import kiln.optim  # noqa: F401
from kiln.tracer import functional as KF

# The first-call timing runs in a fresh process that must not load torch: torch's ~150k objects
# make the garbage collector's first full pass there cost ~100 ms (kiln's alone: ~11 ms), and
# that pass would land in whichever kiln call allocates next.
torch = None if os.environ.get("KILN_BENCH_NO_TORCH") else importlib.import_module("torch")


def median_ms(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def gelu_tanh(lib_f, x):
    return lib_f.gelu(x, approximate="tanh")


def chain21(x):
    y = x
    for i in range(7):
        y = (y * 1.01 + 0.1).tanh()
    return y


def layer_norm(x, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) * (x - mu)).mean(-1, keepdim=True)
    return (x - mu) / (var + eps).sqrt()


def workloads(quick: bool, sizes: str = "6"):
    """(name, data, kiln fn, torch fn) rows; sizes "6" are issue 6's, "7" issue 7's, "gpu" those
    of benchmarks/compile_gpu.py."""
    scale = 8 if quick else 1
    rng = np.random.default_rng(0)
    n_gelu, soft, ln = {"6": (4 << 20, (2048, 2048), (4096, 1024)),
                        "7": (16 << 20, (4096, 4096), (8192, 1024)),
                        "gpu": (64 << 20, (16384, 4096), (16384, 4096))}[sizes]
    gelu_x = rng.standard_normal(n_gelu // scale, dtype=np.float32)
    soft_x = rng.standard_normal((soft[0] // scale, soft[1]), dtype=np.float32)
    ln_x = rng.standard_normal((ln[0] // scale, ln[1]), dtype=np.float32)
    rows = [
        (f"gelu_tanh {_count(gelu_x.size)}", gelu_x, lambda x: gelu_tanh(KF, x),
         lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
        (f"softmax {soft_x.shape[0]}x{soft_x.shape[1]}", soft_x, lambda x: KF.softmax(x, -1),
         lambda x: x.softmax(-1)),
        (f"layer_norm {ln_x.shape[0]}x{ln_x.shape[1]}", ln_x, layer_norm,
         lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:])),
    ]
    if sizes == "6":
        rows.append(("chain21 16 floats", rng.standard_normal(16, dtype=np.float32), chain21,
                     chain21))
    return rows


def _count(n: int) -> str:
    return f"{n >> 20}M" if n % (1 << 20) == 0 else f"{n / 1e6:.1f}M"


def training_step(lib, model, optimizer, **hyper):
    """One step of cross-entropy training of `model` in `lib` (kiln or torch)."""
    opt = optimizer(model.parameters(), **hyper)
    loss_fn = lib.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss
    return step


def _mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def mlp_step_pair(batch: int = 256):
    """The same MLP + Adam training step in kiln and in torch (a maker), on the same data."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    kiln.manual_seed(0)
    k_step = training_step(kiln, _mlp(kiln), kiln.optim.Adam, lr=1e-3)
    return (k_step, (kiln.from_numpy(x), kiln.from_numpy(y))), \
        (lambda: training_step(torch, _mlp(torch), torch.optim.Adam, lr=1e-3),
         None if torch is None else (torch.from_numpy(x), torch.from_numpy(y)))


def cnn_step_pair(batch: int = 64):
    """The digits CNN of benchmarks/train_cpu.py (conv, batch norm, pooling, dropout) with SGD
    and momentum, in kiln and in torch, on the same 8x8 images."""
    from train_cpu import digits_cnn
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    kiln.manual_seed(0)
    k_step = training_step(kiln, digits_cnn(kiln), kiln.optim.SGD, lr=0.05, momentum=0.9)
    return (k_step, (kiln.from_numpy(x), kiln.from_numpy(y))), \
        (lambda: training_step(torch, digits_cnn(torch), torch.optim.SGD, lr=0.05,
                               momentum=0.9), (torch.from_numpy(x), torch.from_numpy(y)))


COMPILE_TIME_CODE = """\
import sys, time
import numpy as np
import kiln
sys.path.insert(0, 'benchmarks')
from compile_cpu import workloads, mlp_step_pair
t0 = time.perf_counter()
# the compiler's own modules load on the first compile of a process; timed apart, since they
# cost the same for every function (networkx is not among them: only the min-cut partition of a
# joint forward+backward graph loads it)
import kiln.passes.cleanup, kiln.passes.fusion, kiln.passes.partition, kiln.program_cache
import kiln.runtime.schedule_executor, kiln.runtime.c_build, kiln.codegen.c
imports = (time.perf_counter() - t0) * 1e3
name = {name!r}
if name == 'mlp step':
    (fn, args), _ = mlp_step_pair()
    args = tuple(args)
else:
    row = [w for w in workloads(True) if w[0] == name][0]
    fn, args = row[2], (kiln.from_numpy(row[1]),)
f = kiln.compile(fn)
t0 = time.perf_counter()
for calls in range(1, 4):                # until a call compiles: a step that makes state (SGD's
    f(*args)                             # momentum) traces again once the state exists
    if f.programs():
        break
first = (time.perf_counter() - t0) * 1e3
assert f.programs(), f"{{name}} did not compile: {{f.entries}}"
t0 = time.perf_counter()
f(*args)                                 # the first replay of the compiled program
print(first, (time.perf_counter() - t0) * 1e3, calls, imports)
"""


def compile_time_ms(name: str, cache_dir: str) -> tuple[float, float, int, float]:
    """In a fresh process: the time of a compiled function's first call (its eager run while
    tracing, the passes, codegen and C build or the disk-cache load), or of its calls until
    one compiled; the time of the first replay after it; that number of calls; and the import
    time of the compiler's modules."""
    env = {**os.environ, "KILN_CACHE_DIR": cache_dir, "KILN_BENCH_NO_TORCH": "1"}
    out = subprocess.run([sys.executable, "-c", COMPILE_TIME_CODE.format(name=name)],
                         capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return math.nan, math.nan, 0, math.nan
    first, replay, calls, imports = out.stdout.strip().splitlines()[-1].split()
    return float(first), float(replay), int(calls), float(imports)


HEADER = (f"{'workload':24s} {'kiln eager':>11s} {'kiln comp':>10s} {'torch':>9s} "
          f"{'inductor':>9s} {'eager/comp':>11s} {'torch/comp':>11s} {'induct/comp':>12s}")


def _row(name, e, c, t, i) -> str:
    ind = f"{i:8.3f}m" if not math.isnan(i) else f"{'-':>9s}"
    ind_ratio = f"{i / c:11.2f}x" if not math.isnan(i) else f"{'-':>12s}"
    return (f"{name:24s} {e:10.3f}m {c:9.3f}m {t:8.3f}m {ind} {e / c:10.2f}x {t / c:10.2f}x "
            f"{ind_ratio}")


def _inductor(fn):
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = 64
    return torch.compile(fn)


def guard_costs(repeat: int = 15) -> None:
    """What a compiled MLP step's replay spends on checking its guards and bounds."""
    from kiln.ir.ops import PRIMITIVES
    (k_step, k_args), _ = mlp_step_pair()
    compiled = kiln.compile(k_step)
    for _ in range(4):
        compiled(*k_args)
    entry = max(compiled.entries.values(), key=lambda e: e.calls)
    replay = median_ms(lambda: compiled(*k_args), repeat)
    guards = median_ms(lambda: entry.valid(k_args), repeat * 20)
    checks = [n for part in (entry.graph, getattr(entry.backward, "graph", None)) if part
              for n in part.nodes if n.op == "check_index"]
    target = k_args[1].numpy()
    impl = PRIMITIVES["check_index"].impl
    bounds = len(checks) * median_ms(
        lambda: impl(np, target, size=10, op="nll_loss", kind="IndexError", negative=False,
                     ignore=-100, message=None), repeat * 20)
    print(f"\ncompiled MLP step 256x784 (Adam, `return loss`): replay {replay:.2f} ms; "
          f"{len(entry.guards)} guards checked in {guards * 1e3:.1f} us "
          f"({100 * guards / replay:.2f}% of the replay); {len(checks)} bounds check(s) "
          f"{bounds * 1e3:.1f} us ({100 * bounds / replay:.2f}%)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="sizes / 8, fewer repeats")
    parser.add_argument("--no-inductor", action="store_true",
                        help="skip the torch.compile column (it compiles for minutes)")
    parser.add_argument("--first-calls", action="store_true",
                        help="only the first-call table (fresh processes; no torch needed)")
    parser.add_argument("--guards", action="store_true",
                        help="only the guard and bounds-check cost of the MLP step's replay, "
                             "and the 21-op chain's per-call time")
    args = parser.parse_args()
    if args.first_calls:
        first_calls(warm_runs=7)
        return
    if args.guards:
        guard_costs()
        (name, data, kfn, _), = [w for w in workloads(False) if w[0] == "chain21 16 floats"]
        compiled, kx = kiln.compile(kfn), kiln.from_numpy(data)
        compiled(kx)
        print(f"per-call time of the compiled 21-op chain on 16 floats: "
              f"{median_ms(lambda: compiled(kx), 750) * 1e3:.1f} us")
        return
    # first, while this process has run no torch op: torch's threads and Inductor's compile
    # workers would otherwise share the cores with the fresh processes timed there
    first_calls()
    repeat = 5 if args.quick else 15
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"threads: torch {torch.get_num_threads()}, kiln C kernels: OpenMP default "
          f"({os.environ.get('OMP_NUM_THREADS', 'one per core')}), numpy BLAS default; "
          f"repeat {repeat}, medians in ms; ratios > 1 mean kiln compiled is faster")
    results = {}
    for title, sizes in (("issue 6 sizes", "6"), ("issue 7 sizes", "7")):
        print(f"\n{title}{' (quick: / 8)' if args.quick else ''}")
        print(HEADER)
        print("-" * len(HEADER))
        for name, data, kfn, tfn in workloads(args.quick, sizes):
            kx, tx = kiln.from_numpy(data), torch.from_numpy(data)
            compiled = kiln.compile(kfn)
            np.testing.assert_allclose(compiled(kx).numpy(), kfn(kx).numpy(), rtol=2e-5,
                                       atol=1e-6)
            n = repeat * (50 if data.size <= 16 else 1)
            e = median_ms(lambda: kfn(kx), n)
            c = median_ms(lambda: compiled(kx), n)
            t = median_ms(lambda: tfn(tx), n)
            i = math.nan
            if not args.no_inductor:
                tc = _inductor(tfn)
                tc(tx)
                np.testing.assert_allclose(tc(tx).numpy(), tfn(tx).numpy(), rtol=1e-4,
                                           atol=1e-5)
                i = median_ms(lambda: tc(tx), n)
            results[name] = (e, c, t, i)
            print(_row(name, e, c, t, i))
    for name, pair in (("mlp step 256x784 adam", mlp_step_pair),
                       ("cnn step 64x1x8x8 sgd", cnn_step_pair)):
        (k_step, k_args), (make_t_step, t_args) = pair()
        compiled_step = kiln.compile(k_step)
        e = median_ms(lambda: k_step(*k_args), repeat)
        c = median_ms(lambda: compiled_step(*k_args), repeat, warmup=4)
        t_step = make_t_step()
        t = median_ms(lambda: t_step(*t_args), repeat)
        i = math.nan
        if not args.no_inductor:
            tc_step = _inductor(make_t_step())
            i = median_ms(lambda: tc_step(*t_args), repeat, warmup=3)
        print(_row(name, e, c, t, i))
    guard_costs(repeat)
    chain = results["chain21 16 floats"]
    print(f"\nper-call time of the compiled 21-op chain on 16 floats: {chain[1] * 1e3:.1f} us "
          f"(kiln eager {chain[0] * 1e3:.1f} us, torch eager {chain[2] * 1e3:.1f} us"
          + (f", torch.compile {chain[3] * 1e3:.1f} us)" if not math.isnan(chain[3]) else ")"))


def first_calls(warm_runs: int = 3) -> None:
    """The first-call table: each row cold once, then warm `warm_runs` times (medians)."""
    with tempfile.TemporaryDirectory() as cache:
        print("\nfirst call, ms, at --quick sizes: the call that traces (running eagerly) and "
              "compiles (passes, codegen; C builds start in the background), and the first "
              "replay after it (it waits for those builds);\n  cold: empty KILN_CACHE_DIR; "
              f"warm: a new process reading the disk cache (medians of {warm_runs} processes); "
              "the compiler's modules import once per process, timed apart")
        print(f"  {'workload':24s} {'cold call':>10s} {'+ replay':>9s} {'warm call':>10s} "
              f"{'+ replay':>9s}")
        for name in [w[0] for w in workloads(True)] + ["mlp step"]:
            cold, cold_replay, calls, imports = compile_time_ms(name, cache)
            warm_rows = [compile_time_ms(name, cache) for _ in range(warm_runs)]
            warm = statistics.median(r[0] for r in warm_rows)
            replay = statistics.median(r[1] for r in warm_rows)
            print(f"  {name:24s} {cold:10.1f} {cold_replay:9.1f} {warm:10.1f} {replay:9.1f}    "
                  f"({calls} call{'s' if calls > 1 else ''} to compile; "
                  f"imports {imports:.0f} ms)")

if __name__ == "__main__":
    main()
