"""Run the GPU-marked tests in a few concurrent pytest processes (benchmarks/gpu_check.sh's part).

Most of a cold GPU test run is the host building kernels (Triton's compiler, CuPy's NVRTC), one
after another; a GPU machine has many cores and the tests are small, so the GPU-marked tests,
split round-robin into `--shards` processes, finish several times sooner. Each shard writes its
own log next to `--log`; this prints each shard's summary line and exits non-zero if any failed.

    python benchmarks/gpu_tests.py --shards 4 --log OUT/gpu_tests.log [PATH ...]
        [--plugin tests.fake_cuda]      # without a GPU: the fake CUDA (a check of this script)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collect(paths: list, plugins: list) -> list[str]:
    """The node ids of the GPU-marked tests under `paths` (all tests if none)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                          "-p", "no:cacheprovider", *plugins, *paths], cwd=ROOT,
                         capture_output=True, text=True)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    if not ids:
        sys.exit(f"no GPU-marked tests collected:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--log", required=True, help="shard k logs to LOG's name + .k")
    parser.add_argument("--plugin", action="append", default=[], help="a pytest plugin to load")
    parser.add_argument("paths", nargs="*", help="test files or folders (default: all)")
    args = parser.parse_args()
    plugins = [arg for name in args.plugin for arg in ("-p", name)]
    ids = collect(args.paths, plugins)
    shards = [ids[k::args.shards] for k in range(args.shards)]
    os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
    start = time.time()
    running = []
    for k, shard in enumerate(s for s in shards if s):
        listing = f"{args.log}.{k}.ids"
        with open(listing, "w") as f:
            f.write("\n".join(shard))
        run = ("import sys, pytest; sys.exit(pytest.main(['-v', '--tb=short', "
               "'-p', 'no:cacheprovider', "
               f"'-m', 'gpu', *{plugins!r}] + open(sys.argv[1]).read().splitlines()))")
        log = open(f"{args.log}.{k}", "w")
        running.append((k, len(shard), log, subprocess.Popen(
            [sys.executable, "-u", "-c", run, listing], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT)))
    status = 0
    for k, n, log, proc in running:
        code = proc.wait()
        log.close()
        with open(log.name) as f:
            lines = f.read().strip().splitlines()
        print(f"shard {k} ({n} tests) exit {code}: {lines[-1] if lines else '(no output)'}")
        if code != 0:
            status = 1
            print("\n".join(lines[-40:]))
    print(f"{len(ids)} GPU-marked tests in {len(running)} shards: {time.time() - start:.0f} s, "
          f"{'all passed' if status == 0 else 'FAILURES'}")
    sys.exit(status)


if __name__ == "__main__":
    main()
