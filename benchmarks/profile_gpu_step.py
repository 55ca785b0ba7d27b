"""Where a compiled step's host time goes on a CUDA GPU (benchmarks/gpu_check.sh's last part).

Compiles the MLP + Adam training step of compile_gpu.py (batch 512: the GPU work is small, so
the host's part shows) and the 21-op chain on 16 floats, prints each one's CUDA-graph notes and
median wall time per call, then profiles 200 calls of the step with cProfile and prints the
functions with the most own time. Needs what compile_gpu.py needs; exits 2 without it.

    PYTHONPATH=. python benchmarks/profile_gpu_step.py [--calls 200] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kiln  # noqa: E402
from compile_gpu import device_synchronize, gpu_problem, wall_ms  # noqa: E402


def _report(name: str, compiled, call) -> None:
    for line in kiln.compiler.cuda_graph_notes(compiled):
        print(f"    {line}")
    print(f"{name}: {wall_ms(call, 15) * 1e3:.1f} us per call (wall, median of 15 samples)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    problem = gpu_problem()
    if problem:
        print(f"profile_gpu_step.py needs a CUDA GPU: {problem}", file=sys.stderr)
        sys.exit(2)
    from compile_cpu import _mlp, chain21, training_step

    x16 = kiln.from_numpy(np.random.default_rng(0).standard_normal(16, dtype=np.float32)).cuda()
    chain = kiln.compile(chain21)
    for _ in range(4):
        chain(x16)
    _report("chain21 16 floats, compiled", chain, lambda: chain(x16))
    print(f"chain21 16 floats, eager: {wall_ms(lambda: chain21(x16), 15) * 1e3:.1f} us per call")

    rng = np.random.default_rng(1)
    x = kiln.from_numpy(rng.standard_normal((512, 784), dtype=np.float32)).cuda()
    y = kiln.from_numpy(rng.integers(0, 10, 512)).cuda()
    kiln.manual_seed(0)
    model = _mlp(kiln).cuda()
    step = kiln.compile(training_step(kiln, model, kiln.optim.Adam, lr=1e-3))
    for _ in range(6):
        step(x, y).item()
    _report("mlp step 512x784 adam, compiled", step, lambda: step(x, y))

    profile = cProfile.Profile()
    device_synchronize()
    profile.enable()
    for _ in range(args.calls):
        step(x, y)
    device_synchronize()
    profile.disable()
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text).sort_stats("tottime")
    stats.print_stats(args.top)
    print(f"\ncProfile of {args.calls} calls of the compiled step, by own time:")
    print(text.getvalue())


if __name__ == "__main__":
    main()
