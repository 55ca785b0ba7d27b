"""kiln.distributed.rpc beside torch.distributed.rpc (TensorPipe) on the CPU: the round trip of
a small rpc_sync, and a float32 tensor of 1 MiB and of 16 MiB echoed back, two workers.

    python benchmarks/rpc_cpu.py [--runs 3] [--calls 300]

kiln's workers start under `mpiexec -n 2`, torch's under torch.multiprocessing; the two
frameworks run alternately (kiln, torch, kiln, ...) so a busy moment on a shared host lands on
both alike. Each run reports medians; printed are the medians over runs and kiln / torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"1 MiB": 1 << 18, "16 MiB": 1 << 22}      # float32 elements


def add(a, b):
    return a + b


def echo(x):
    return x


def measure(rpc, lib, calls: int) -> dict:
    """Seconds per small round trip and per tensor echo (medians of rounds)."""
    for _ in range(20):
        rpc.rpc_sync("w1", add, args=(1, 2))
    small = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls // 5):
            rpc.rpc_sync("w1", add, args=(1, 2))
        small.append((time.perf_counter() - t0) / (calls // 5))
    result = {"small rpc_sync": statistics.median(small)}
    for name, n in SIZES.items():
        x = lib.ones(n, dtype=lib.float32)
        rpc.rpc_sync("w1", echo, args=(x,))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            rpc.rpc_sync("w1", echo, args=(x,))
            times.append(time.perf_counter() - t0)
        result[f"echo {name}"] = statistics.median(times)
    return result


def kiln_rank(out: str, calls: int) -> None:
    sys.path.insert(0, ROOT)
    from mpi4py import MPI

    import kiln
    import kiln.distributed.rpc as rpc
    rank = MPI.COMM_WORLD.Get_rank()
    rpc.init_rpc(f"w{rank}")
    if rank == 0:
        with open(out, "w") as f:
            json.dump(measure(rpc, kiln, calls), f)
    rpc.shutdown()


def torch_rank(rank: int, store: str, out: str, calls: int) -> None:
    import torch
    import torch.distributed.rpc as rpc
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"file://{store}")
    rpc.init_rpc(f"w{rank}", rank=rank, world_size=2, rpc_backend_options=options)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(measure(rpc, torch, calls), f)
    rpc.shutdown()
    os._exit(0)         # no interpreter teardown: torch's RPC threads can abort it


def run_one(kind: str, calls: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        if kind == "kiln":
            from kiln.distributed.run import find_mpiexec
            cmd = [find_mpiexec(), "-n", "2", sys.executable, __file__, "--kiln-rank", out,
                   "--calls", str(calls)]
        else:
            cmd = [sys.executable, __file__, "--torch", out, "--calls", str(calls)]
        subprocess.run(cmd, env=env, check=True, timeout=300, stdin=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--kiln-rank", help=argparse.SUPPRESS)
    parser.add_argument("--torch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kiln_rank:
        kiln_rank(args.kiln_rank, args.calls)
        return
    if args.torch:
        import torch.multiprocessing as mp
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(torch_rank, args=(os.path.join(tmp, "store"), args.torch, args.calls),
                     nprocs=2)
        return
    runs: dict = {"kiln": [], "torch": []}
    for _ in range(args.runs):
        for kind in runs:
            runs[kind].append(run_one(kind, args.calls))
    print(f"{'':18}{'kiln (MPI)':>12}{'torch (TP)':>12}{'kiln/torch':>12}")
    for key in runs["kiln"][0]:
        k = statistics.median(r[key] for r in runs["kiln"]) * 1e3
        t = statistics.median(r[key] for r in runs["torch"]) * 1e3
        print(f"{key:18}{k:>10.3f}ms{t:>10.3f}ms{k / t:>12.2f}")


if __name__ == "__main__":
    main()
