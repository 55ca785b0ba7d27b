"""Prints, for each program of the tracer's corpus, its nodes before and after cleanup, the
kernels and extern calls fusion makes of it, and the memory plan's bytes.

Run: python benchmarks/fusion_report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kiln  # noqa: E402
from kiln.passes.pipeline import run_passes  # noqa: E402
from tests.tracer.test_trace_corpus import CASES  # noqa: E402


def main() -> None:
    header = (f"{'program':<36} {'nodes':>6} {'opt':>5} {'kernels':>8} {'externs':>8} "
              f"{'bytes/value':>12} {'planned':>9}")
    print(header)
    print("-" * len(header))
    totals = [0, 0, 0, 0]
    for name in sorted(CASES):
        kiln.manual_seed(0)
        fn, args = CASES[name]()
        (program,) = kiln.compiler.trace(fn, *args).programs
        report = run_passes(program.graph)
        s, plan = report.schedule, report.plan
        row = [len(program.graph.nodes), len(report.optimized.nodes), len(s.kernels),
               len(s.externs)]
        totals = [t + r for t, r in zip(totals, row)]
        print(f"{name:<36} {row[0]:>6} {row[1]:>5} {row[2]:>8} {row[3]:>8} "
              f"{plan.naive_bytes:>12} {plan.planned_bytes:>9}")
    print("-" * len(header))
    print(f"{'total':<36} {totals[0]:>6} {totals[1]:>5} {totals[2]:>8} {totals[3]:>8}")


if __name__ == "__main__":
    main()
