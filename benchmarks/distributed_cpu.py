"""kiln.distributed on the CPU: all-reduce bandwidth beside a plain mpi4py Allreduce of the same
buffer, and a DDP training step on 1 and 2 ranks (one thread each), with how much of the
gradient all-reduce DDP hides behind backward.

    python benchmarks/distributed_cpu.py [--repeats 20]

Starts itself under mpiexec (-n 1, then -n 2) with OMP_NUM_THREADS=1; rank 0 reports. The
overlap is measured as (backward alone + all-reduce alone - DDP backward) / all-reduce alone:
the share of communication time that disappeared behind computation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _interleaved(fns: dict, repeats: int, sync) -> dict:
    """Median seconds of each function, run in turn (A, B, C, A, B, C, ...) so that a busy
    moment on a shared host lands on all of them alike; ranks line up by `sync()` before each."""
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rank_main(repeats: int) -> None:
    sys.path.insert(0, ROOT)
    from mpi4py import MPI

    import kiln
    import kiln.distributed as dist
    import kiln.nn as nn
    import kiln.nn.functional as F
    from kiln.distributed import process_group as pg
    from kiln.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group()
    rank, size = dist.get_rank(), dist.get_world_size()
    comm = pg._WORLD.comm
    result = {"ranks": size, "bandwidth": []}

    def sync():
        comm.Barrier()

    # -- all-reduce bandwidth (float32, in place)
    for n in (1 << 10, 1 << 14, 1 << 18, 1 << 22):
        t = kiln.ones(n)
        raw = np.ones(n, dtype=np.float32)
        def unchecked():
            pg._WORLD.checks = False
            dist.all_reduce(t)
            pg._WORLD.checks = True
        row = _interleaved({"kiln": lambda: dist.all_reduce(t), "kiln_unchecked": unchecked,
                            "mpi4py": lambda: comm.Allreduce(MPI.IN_PLACE, raw)}, repeats, sync)
        result["bandwidth"].append(dict(row, bytes=4 * n))

    # -- DDP step: an MLP with 1.9M parameters, 64 samples per rank
    kiln.manual_seed(0)

    def build():
        return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                             nn.Linear(1024, 10))
    model = build()
    ddp = DDP(model)
    plain = build()
    plain.load_state_dict(model.state_dict())
    x, y = kiln.randn(64, 784), kiln.randint(0, 10, (64,))

    def local_fwd_bwd():
        plain.zero_grad()
        F.cross_entropy(plain(x), y).backward()

    def ddp_fwd_bwd():
        ddp.zero_grad()
        F.cross_entropy(ddp(x), y).backward()

    reducer = ddp.reducer

    def allreduce_alone():       # the same buckets, after backward, one blocking call each
        for bucket in reducer.buckets:
            for p, off in zip(bucket.params, bucket.offsets):
                bucket.flat[off:off + p.numel()] = plain.get_parameter(
                    names[id(p)]).grad._data.reshape(-1)
            comm.Allreduce(MPI.IN_PLACE, bucket.flat)

    names = {id(p): n for n, p in model.named_parameters()}
    opt = kiln.optim.SGD(ddp.parameters(), lr=1e-3)

    def ddp_step():
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()

    local_fwd_bwd()
    times = _interleaved({"backward_alone": local_fwd_bwd, "allreduce_alone": allreduce_alone,
                          "ddp_backward": ddp_fwd_bwd, "ddp_step": ddp_step}, repeats, sync)
    result.update(times)
    result["buckets"] = len(reducer.buckets)
    result["params"] = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


def launch(n: int, repeats: int) -> dict:
    from kiln.distributed.run import find_mpiexec
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([find_mpiexec(), "-n", str(n), sys.executable, __file__, "--rank",
                          "--repeats", str(repeats)], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise SystemExit(out.stdout + out.stderr)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        rank_main(args.repeats)
        return
    one, two = launch(1, args.repeats), launch(2, args.repeats)
    print("all-reduce, 2 ranks, float32 in place (algorithmic bandwidth, median of "
          f"{args.repeats})")
    print(f"{'bytes':>10} {'kiln GB/s':>10} {'unchecked':>10} {'mpi4py GB/s':>12} "
          f"{'kiln/mpi4py time':>17}")
    for row in two["bandwidth"]:
        gbs = [row["bytes"] / row[k] / 1e9 for k in ("kiln", "kiln_unchecked", "mpi4py")]
        print(f"{row['bytes']:>10} {gbs[0]:>10.2f} {gbs[1]:>10.2f} {gbs[2]:>12.2f} "
              f"{row['kiln'] / row['mpi4py']:>17.2f}")
    print(f"\nDDP, MLP 784-1024-1024-10 ({two['params'] / 1e6:.2f}M parameters, "
          f"{two['buckets']} buckets), 64 samples per rank, one thread per rank")
    print(f"{'ranks':>5} {'fwd+bwd alone ms':>17} {'all-reduce alone ms':>20} "
          f"{'DDP fwd+bwd ms':>15} {'DDP step ms':>12} {'comm hidden':>12}")
    for r in (one, two):
        hidden = (r["backward_alone"] + r["allreduce_alone"] - r["ddp_backward"])
        share = hidden / r["allreduce_alone"] if r["ranks"] > 1 else float("nan")
        print(f"{r['ranks']:>5} {1e3 * r['backward_alone']:>17.2f} "
              f"{1e3 * r['allreduce_alone']:>20.2f} {1e3 * r['ddp_backward']:>15.2f} "
              f"{1e3 * r['ddp_step']:>12.2f} {share:>12.0%}")


if __name__ == "__main__":
    main()
