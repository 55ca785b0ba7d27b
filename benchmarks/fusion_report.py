"""Prints, for each program of the tracer's corpus, what the compiler's pipeline makes of it for
the C target: nodes before and after cleanup, the steps the executor runs (generated kernels,
views, array-executor steps, matmuls) and the kept buffers it allocates (the lowered program's
memory plan) against one buffer per value it writes.

Run: python benchmarks/fusion_report.py
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kiln  # noqa: E402
from kiln.codegen.lower import lower_schedule  # noqa: E402
from kiln.passes.pipeline import compile_passes  # noqa: E402
from tests.tracer.test_trace_corpus import CASES  # noqa: E402


def main() -> None:
    header = (f"{'program':<36} {'nodes':>6} {'opt':>5} {'kernels':>8} {'views':>6} "
              f"{'array':>6} {'matmul':>7} {'buffers':>8} {'bytes/value':>12} {'planned':>9}")
    print(header)
    print("-" * len(header))
    totals = [0] * 9
    lower = functools.partial(lower_schedule, target="c")
    for name in sorted(CASES):
        kiln.manual_seed(0)
        fn, args = CASES[name]()
        (program,) = kiln.compiler.trace(fn, *args).programs
        part = compile_passes(program.graph, lower=lower).forward
        lowered = part.lowered
        kinds = [s.kind for s in lowered.steps]
        # one buffer per value the executor writes into kept memory, against the plan's
        each = sum(math.prod(lowered.shapes[o]) * lowered.dtypes[o].itemsize
                   for s in lowered.steps for o, kept in zip(s.outs, s.kept) if kept)
        row = [len(program.graph.nodes), len(part.graph.nodes), kinds.count("c"),
               kinds.count("view"), kinds.count("array"), kinds.count("matmul"),
               len(lowered.buffer_bytes), each, sum(lowered.buffer_bytes)]
        totals = [t + r for t, r in zip(totals, row)]
        print(f"{name:<36} " + " ".join(f"{r:>{w}}" for r, w in zip(row, WIDTHS)))
    print("-" * len(header))
    print(f"{'total':<36} " + " ".join(f"{r:>{w}}" for r, w in zip(totals, WIDTHS)))


WIDTHS = (6, 5, 8, 6, 6, 7, 8, 12, 9)

if __name__ == "__main__":
    main()
