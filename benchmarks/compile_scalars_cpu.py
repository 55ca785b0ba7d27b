"""Per-call cost of a compiled function's replay with a number argument lifted to a graph input
(`kiln.tracer.symbolic_number`) vs a replay with the number keyed by value, and with no number.

Run: python benchmarks/compile_scalars_cpu.py
The function is tiny (`x - lr * x.sin()` on 16 float32 elements), so the times are the replay's
own Python cost: the key, the guards, fetching the inputs (a lifted number is made a 0-d array
each call), and the program's launch. Medians of several repeats, side by side in one process.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import statistics  # noqa: E402
import timeit  # noqa: E402

import kiln  # noqa: E402


def _median_us(call, number: int = 2000, repeat: int = 7) -> float:
    return statistics.median(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    x = kiln.randn(16)
    keyed = kiln.compile(lambda x, lr: x - lr * x.sin())
    lifted = kiln.compile(lambda x, lr: x - lr * x.sin())
    bare = kiln.compile(lambda x: x - 0.1 * x.sin())
    keyed(x, 0.1)
    lifted(x, 0.1)
    lifted(x, 0.2)                      # a second value: lifted from now on
    lifted(x, 0.3)
    bare(x)
    assert lifted._lifted and not keyed._lifted
    values = [0.1 / (i + 1) for i in range(64)]
    rows = [("no number argument", lambda: bare(x)),
            ("number keyed by value (same value each call)", lambda: keyed(x, 0.1)),
            ("number lifted (same value each call)", lambda: lifted(x, 0.1)),
            ("number lifted (a new value each call)",
             lambda it=iter(values * 10 ** 4): lifted(x, next(it)))]
    base = None
    for name, call in rows:
        t = _median_us(call)
        base = base or t
        print(f"{name:48s} {t:7.2f} us/call  ({t / base:.2f}x)")


if __name__ == "__main__":
    main()
