"""kiln eager vs kiln compiled (auto backend) vs PyTorch eager on CPU, side by side.

Run: python benchmarks/compile_cpu.py [--quick]
Prints median milliseconds per call and ratios, the per-call overhead of a compiled function on
a 21-op chain of 16 floats, and first-call compile times (cold: empty kernel cache; warm: a
new process reading the disk cache).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import kiln
import kiln.nn as knn
import kiln.optim  # noqa: F401
from kiln.tracer import functional as KF


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


def workloads(quick: bool):
    scale = 8 if quick else 1
    rng = np.random.default_rng(0)
    gelu_x = rng.standard_normal(4_000_000 // scale, dtype=np.float32)
    soft_x = rng.standard_normal((2048 // scale, 2048), dtype=np.float32)
    ln_x = rng.standard_normal((4096 // scale, 1024), dtype=np.float32)
    tiny = rng.standard_normal(16, dtype=np.float32)
    return [
        ("gelu_tanh 4M", gelu_x, lambda x: gelu_tanh(KF, x),
         lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
        ("softmax 2048x2048", soft_x, lambda x: KF.softmax(x, -1), lambda x: x.softmax(-1)),
        ("layer_norm 4096x1024", ln_x, layer_norm,
         lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:])),
        ("chain21 16 floats", tiny, chain21, chain21),
    ]


def mlp_step_pair(batch: int = 256):
    """The same MLP + Adam training step in kiln and in torch, on the same data."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    kiln.manual_seed(0)
    model = knn.Sequential(knn.Linear(784, 512), knn.ReLU(), knn.Linear(512, 512), knn.ReLU(),
                           knn.Linear(512, 10))
    opt = kiln.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = knn.CrossEntropyLoss()

    def k_step(xb, yb):
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    tmodel = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                 torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                 torch.nn.Linear(512, 10))
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    tloss = torch.nn.CrossEntropyLoss()

    def t_step(xb, yb):
        topt.zero_grad()
        loss = tloss(tmodel(xb), yb)
        loss.backward()
        topt.step()
        return loss.detach()
    return (k_step, (kiln.from_numpy(x), kiln.from_numpy(y))), \
        (t_step, (torch.from_numpy(x), torch.from_numpy(y)))


def compile_time_ms(name: str, cache_dir: str) -> float:
    """First-call time of a compiled function in a fresh process (trace + build)."""
    code = (
        "import time, numpy as np, kiln\n"
        "import sys; sys.path.insert(0, 'benchmarks')\n"
        "from compile_cpu import workloads\n"
        f"name = {name!r}\n"
        "row = [w for w in workloads(True) if w[0] == name][0]\n"
        "f = kiln.compile(row[2]); x = kiln.from_numpy(row[1])\n"
        "t0 = time.perf_counter(); f(x); f(x); print((time.perf_counter() - t0) * 1e3)\n")
    env = {**os.environ, "KILN_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
    if out.returncode:
        return math.nan
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = parser.parse_args()
    repeat = 5 if args.quick else 15
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"threads: torch {torch.get_num_threads()}, numpy (BLAS) default; "
          f"repeat {repeat}, medians")
    header = f"{'workload':24s} {'kiln eager':>11s} {'compiled':>10s} {'torch':>9s} " \
             f"{'eager/comp':>11s} {'torch/comp':>11s}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, data, kfn, tfn in workloads(args.quick):
        kx, tx = kiln.from_numpy(data), torch.from_numpy(data)
        compiled = kiln.compile(kfn)
        np.testing.assert_allclose(compiled(kx).numpy(), kfn(kx).numpy(), rtol=2e-5,
                                   atol=1e-6)
        n = repeat * (50 if data.size <= 16 else 1)
        e = median_ms(lambda: kfn(kx), n)
        c = median_ms(lambda: compiled(kx), n)
        t = median_ms(lambda: tfn(tx), n)
        rows.append((name, e, c, t))
        print(f"{name:24s} {e:10.3f}m {c:9.3f}m {t:8.3f}m {e / c:10.2f}x {t / c:10.2f}x")
    (k_step, k_args), (t_step, t_args) = mlp_step_pair()
    compiled_step = kiln.compile(k_step)
    e = median_ms(lambda: k_step(*k_args), repeat)
    c = median_ms(lambda: compiled_step(*k_args), repeat, warmup=3)
    t = median_ms(lambda: t_step(*t_args), repeat)
    print(f"{'mlp step 256x784 adam':24s} {e:10.3f}m {c:9.3f}m {t:8.3f}m {e / c:10.2f}x "
          f"{t / c:10.2f}x")
    chain = [r for r in rows if r[0].startswith("chain21")][0]
    print(f"\nper-call time of the compiled 21-op chain on 16 floats: {chain[2] * 1e3:.1f} us "
          f"(eager {chain[1] * 1e3:.1f} us, torch eager {chain[3] * 1e3:.1f} us)")
    with tempfile.TemporaryDirectory() as cache:
        print("first call (trace + build), ms:  cold (empty cache) / warm (disk cache)")
        for name, *_ in workloads(True):
            cold = compile_time_ms(name, cache)
            warm = compile_time_ms(name, cache)
            print(f"  {name:24s} {cold:8.1f} / {warm:8.1f}")


if __name__ == "__main__":
    main()
