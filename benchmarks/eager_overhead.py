"""Per-op cost of kiln eager vs NumPy vs PyTorch eager, on 16 and on 1M float32 elements.

Run: python benchmarks/eager_overhead.py [--quick] [--only add,exp]
Issue 2's targets: at 16 elements (pure overhead) kiln within 2x of PyTorch eager; at 1M
elements (pure compute) kiln within 1.2x of NumPy, which does the same arithmetic. Every number
is the median over several repeats of a timeit-style loop, all measured side by side in one
process with one thread for every library (BLAS included), so the ratios mean something on a
shared machine. The `+grad` rows run the same op on inputs with requires_grad=True: the extra
cost there is autograd's bookkeeping (NumPy has no such row; its column repeats the plain op).
np.where on a random 1M mask is a branchy loop whose time swings 2-3x with the process's history
(the where and relu rows at 1M): kiln runs that same np.where call, so read those two ratios as
noise, not as kiln beating NumPy.
"""

from __future__ import annotations

import os

# one thread everywhere, set before NumPy loads its BLAS: per-op ratios, not parallel speedups
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import timeit  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kiln  # noqa: E402

torch.set_num_threads(1)

SMALL, LARGE = 16, 1 << 20


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_relu(x):
    return np.where(x > 0, x, np.float32(0))


# name -> (shape of `x` for n elements, the op in each library); `y` has x's shape, except
# for matmul, where it is (columns of x, 16)
def _square(n):
    side = math.isqrt(n)
    return (side, n // side)


# views cost the same at any size (no data is touched), so their 1M column is overhead again
# and stays out of the 1M geomean and target
VIEWS = ("reshape", "slice x[1:-1]", "transpose .T")


OPS = {
    "add": (lambda n: (n,), {
        "numpy": lambda x, y: x + y, "torch": lambda x, y: x + y, "kiln": lambda x, y: x + y}),
    "mul scalar": (lambda n: (n,), {
        "numpy": lambda x, y: x * np.float32(2.5), "torch": lambda x, y: x * 2.5,
        "kiln": lambda x, y: x * 2.5}),
    "exp": (lambda n: (n,), {
        "numpy": lambda x, y: np.exp(x), "torch": lambda x, y: x.exp(),
        "kiln": lambda x, y: x.exp()}),
    "relu": (lambda n: (n,), {
        "numpy": lambda x, y: _np_relu(x), "torch": lambda x, y: torch.relu(x),
        "kiln": lambda x, y: kiln.relu(x)}),
    "where(x>y,x,y)": (lambda n: (n,), {
        "numpy": lambda x, y: np.where(x > y, x, y),
        "torch": lambda x, y: torch.where(x > y, x, y),
        "kiln": lambda x, y: kiln.where(x > y, x, y)}),
    "lt (compare)": (lambda n: (n,), {
        "numpy": lambda x, y: x < y, "torch": lambda x, y: x < y, "kiln": lambda x, y: x < y}),
    "sum": (lambda n: (n,), {
        "numpy": lambda x, y: x.sum(), "torch": lambda x, y: x.sum(),
        "kiln": lambda x, y: x.sum()}),
    "mean(dim=-1)": (_square, {
        "numpy": lambda x, y: x.mean(-1), "torch": lambda x, y: x.mean(-1),
        "kiln": lambda x, y: x.mean(-1)}),
    "softmax(-1)": (_square, {
        "numpy": lambda x, y: _np_softmax(x), "torch": lambda x, y: x.softmax(-1),
        "kiln": lambda x, y: x.softmax(-1)}),
    "matmul [n,k]@[k,16]": (_square, {
        "numpy": lambda x, y: x @ y, "torch": lambda x, y: x @ y, "kiln": lambda x, y: x @ y}),
    "reshape": (_square, {
        "numpy": lambda x, y: x.reshape(-1), "torch": lambda x, y: x.reshape(-1),
        "kiln": lambda x, y: x.reshape(-1)}),
    "slice x[1:-1]": (lambda n: (n,), {
        "numpy": lambda x, y: x[1:-1], "torch": lambda x, y: x[1:-1],
        "kiln": lambda x, y: x[1:-1]}),
    "transpose .T": (_square, {
        "numpy": lambda x, y: x.T, "torch": lambda x, y: x.T, "kiln": lambda x, y: x.T}),
    "add +grad": (lambda n: (n,), {
        "numpy": lambda x, y: x + y, "torch": lambda x, y: x + y, "kiln": lambda x, y: x + y}),
    "mul scalar +grad": (lambda n: (n,), {
        "numpy": lambda x, y: x * np.float32(2.5), "torch": lambda x, y: x * 2.5,
        "kiln": lambda x, y: x * 2.5}),
}
LIBS = ("numpy", "torch", "kiln")


def calibrate(timer: timeit.Timer, budget_s: float) -> int:
    """Calls per timeit loop so that one loop takes about `budget_s` (timeit.autorange-like)."""
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= budget_s / 4 or number >= 1 << 20:
            return max(1, int(number * budget_s / max(elapsed, 1e-9)))
        number *= 2


def median_us(calls: dict, repeat: int, budget_s: float) -> dict:
    """Median microseconds per call of each of `calls`, over `repeat` rounds.

    Each round runs one timeit loop of every library in turn, so a burst of load from another
    process on a shared machine hits all of them alike and their ratios stay fair.
    """
    timers = {lib: timeit.Timer(fn) for lib, fn in calls.items()}
    numbers = {lib: calibrate(t, budget_s) for lib, t in timers.items()}
    samples = {lib: [] for lib in calls}
    for _ in range(repeat):
        for lib, t in timers.items():
            samples[lib].append(t.timeit(numbers[lib]) / numbers[lib])
    return {lib: statistics.median(v) * 1e6 for lib, v in samples.items()}


def inputs(lib: str, name: str, shape: tuple, requires_grad: bool):
    rng = np.random.default_rng(0)
    y_shape = (shape[-1], 16) if name.startswith("matmul") else shape
    xs = [rng.standard_normal(s, dtype=np.float32) for s in (shape, y_shape)]
    if lib == "numpy":
        return xs
    if lib == "torch":
        return [torch.tensor(a, requires_grad=requires_grad) for a in xs]
    return [kiln.tensor(a, requires_grad=requires_grad) for a in xs]


def geomean(values) -> float:
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--only", default="", help="comma-separated parts of op names to run")
    args = parser.parse_args()
    repeat, budget = (5, 0.01) if args.quick else (11, 0.05)
    names = [n for n in OPS if not args.only or any(o in n for o in args.only.split(","))]

    print(f"median µs per op, float32, 1 thread; numpy {np.__version__}, torch "
          f"{torch.__version__}; {repeat} interleaved rounds")
    header = (f"{'op':<20}|{'np 16':>8}{'torch 16':>10}{'kiln 16':>9}{'k/torch':>9} |"
              f"{'np 1M':>9}{'torch 1M':>10}{'kiln 1M':>9}{'k/np':>8}")
    print(header)
    print("-" * len(header))
    rows = {}
    for name in names:
        shape_of, fns = OPS[name]
        grad = name.endswith("+grad")
        row = {}
        for n, tag in ((SMALL, "16"), (LARGE, "1M")):
            calls = {}
            for lib in LIBS:
                x, y = inputs(lib, name, shape_of(n), grad and lib != "numpy")
                calls[lib] = (lambda fn, x, y: lambda: fn(x, y))(fns[lib], x, y)
            for lib, us in median_us(calls, repeat, budget).items():
                row[lib + tag] = us
        row["r16"] = row["kiln16"] / row["torch16"]
        row["r1M"] = row["kiln1M"] / row["numpy1M"]
        rows[name] = row
        r1m = f"{row['r1M']:6.2f}x " if name not in VIEWS else f"({row['r1M']:.1f}x)"
        print(f"{name:<20}|{row['numpy16']:8.2f}{row['torch16']:10.2f}{row['kiln16']:9.2f}"
              f"{row['r16']:8.2f}x |{row['numpy1M']:9.1f}{row['torch1M']:10.1f}"
              f"{row['kiln1M']:9.1f}{r1m:>8}", flush=True)
    print("-" * len(header))
    g16 = {k: geomean([r[k] for r in rows.values()])
           for k in ("numpy16", "torch16", "kiln16", "r16")}
    big = [r for name, r in rows.items() if name not in VIEWS]
    g1m = {k: geomean([r[k] for r in big]) for k in ("numpy1M", "torch1M", "kiln1M", "r1M")}
    print(f"{'geomean':<20}|{g16['numpy16']:8.2f}{g16['torch16']:10.2f}{g16['kiln16']:9.2f}"
          f"{g16['r16']:8.2f}x |{g1m['numpy1M']:9.1f}{g1m['torch1M']:10.1f}"
          f"{g1m['kiln1M']:9.1f}{g1m['r1M']:6.2f}x")
    over16 = [n for n, r in rows.items() if r["r16"] > 2.0]
    over1m = [n for n, r in rows.items() if n not in VIEWS and r["r1M"] > 1.2]
    print(f"target 16: kiln/torch <= 2x; geomean {g16['r16']:.2f}x; over: "
          f"{', '.join(over16) or 'none'}")
    print(f"target 1M: kiln/numpy <= 1.2x (views in parentheses, left out); geomean "
          f"{g1m['r1M']:.2f}x; over: {', '.join(over1m) or 'none'}")


if __name__ == "__main__":
    main()
