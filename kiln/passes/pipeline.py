"""The pass pipeline as one call: cleanup, fusion and memory planning, with a readable report.

`run_passes(graph)` is what `kiln dump` and `explain` show, and what the compiler will call
between tracing and codegen.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.graph import Graph
from kiln.passes.cleanup import PassStat, optimize
from kiln.passes.fusion import Schedule, fuse
from kiln.passes.memory import MemoryPlan, plan_memory


@dataclass
class PassReport:
    """Everything the passes made of one graph."""

    graph: Graph
    optimized: Graph
    stats: list
    schedule: Schedule
    plan: MemoryPlan

    def stats_text(self) -> str:
        lines = [f"{'pass':<16} {'nodes':>5}"]
        lines += [str(s) for s in self.stats]
        lines.append(f"{'total':<16} {len(self.graph.nodes):>5} -> {len(self.optimized.nodes)}")
        return "\n".join(lines)

    def dot(self) -> str:
        """The optimized graph with each fusion group in its own colour."""
        return self.optimized.to_dot(groups=self.schedule.groups())

    def sections(self) -> list[tuple[str, str]]:
        return [("optimized graph", str(self.optimized)),
                ("pass statistics", self.stats_text()),
                ("fusion groups", str(self.schedule)),
                ("memory plan", str(self.plan))]


def run_passes(graph: Graph) -> PassReport:
    """Optimize `graph`, fuse it into a schedule and plan its buffers."""
    optimized, stats = optimize(graph)
    schedule = fuse(optimized)
    return PassReport(graph, optimized, stats, schedule, plan_memory(schedule))


__all__ = ["PassReport", "PassStat", "run_passes"]
