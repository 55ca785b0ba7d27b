"""What the TorchDispatchMode check costs an eager op with no mode: `x + y` on 16 floats.

Run: python benchmarks/dispatch_mode_overhead.py
The dispatcher with and without its one check (`dispatch.apply`'s first two lines, removed
from a copy of its source) is installed in turn in the dispatcher slot of one process, so both
see the same machine load; each prints the best of rounds x 5 repeats x 100k calls.
"""

from __future__ import annotations

import inspect
import os
import timeit

os.environ.setdefault("OMP_NUM_THREADS", "1")

import kiln  # noqa: E402
from kiln.ir.ops import P  # noqa: E402
from kiln.tracer import dispatch  # noqa: E402

CHECK = ("    if _MODES[0] and STATE.dispatch_modes:      # a TorchDispatchMode takes the call\n"
         "        return _dispatch_mode.handle(prim, args, attrs, device)\n")


def without_check():
    """`dispatch.apply` as it was before dispatch modes: its source minus the check."""
    source = inspect.getsource(dispatch.apply)
    if CHECK not in source:
        raise SystemExit("dispatch.apply's mode check changed: update CHECK")
    namespace = dict(vars(dispatch))
    exec(source.replace(CHECK, "").replace("def apply(", "def apply_without_check("),
         namespace)
    return namespace["apply_without_check"]


def main(rounds: int = 10) -> None:
    x, y = kiln.randn(16), kiln.randn(16)
    variants = {"without the check": without_check(), "with the check": dispatch.apply}
    best = dict.fromkeys(variants, float("inf"))
    try:
        for _ in range(rounds):
            for name, apply in variants.items():
                P.dispatch = apply
                seconds = min(timeit.repeat(lambda: x + y, number=100_000, repeat=5))
                best[name] = min(best[name], seconds / 100_000 * 1e6)
    finally:
        P.dispatch = dispatch.apply
    for name, us in best.items():
        print(f"x + y, 16 floats, {name}: {us:.3f} us per call")


if __name__ == "__main__":
    main()
