"""The pass pipeline as one call: cleanup, fusion and memory planning, with a readable report.

`compile_passes` is what the compiler runs between tracing and codegen (after the
forward/backward partition of a joint graph); `run_passes(graph)` runs the same passes on one
graph with a report and a `passes.memory` plan, for studying the passes (benchmarks, tests).
`kiln dump` and `explain` print the compiled entry's artifact instead (`kiln.compiler.artifact`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.graph import Graph
from kiln.passes.cleanup import PassStat, optimize
from kiln.passes.decompose import decompose
from kiln.passes.fusion import Schedule, fuse
from kiln.passes.matmul_sums import merge_matmul_sums
from kiln.passes.pad_sums import concatenate_padded_sums
from kiln.passes.memory import MemoryPlan, plan_memory
from kiln.passes.partition import PartitionReport, partition
from kiln.passes.slice_sinking import sink_slices


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
    optimized, stats = _optimize(graph, fused=True)
    schedule = fuse(optimized)
    return PassReport(graph, optimized, stats, schedule, plan_memory(schedule))


@dataclass
class CompiledPart:
    """One program the compiler runs: its optimized graph, how it got there, how it is fused."""

    graph: Graph                        # the optimized graph
    stats: list                         # PassStat per pass application
    schedule: Schedule | None = None    # the fused program; None for the NumPy executor


@dataclass
class CompiledProgram:
    """What the passes made of one traced graph: a forward program and, when the graph was a
    joint forward+backward trace, the backward program and what the partition saved."""

    forward: CompiledPart
    backward: CompiledPart | None = None
    partition: PartitionReport | None = None


def compile_passes(graph: Graph, joint=None, fused: bool = True) -> CompiledProgram:
    """Partition a joint graph (`joint`: its JointInfo), then optimize and, when `fused`, fuse
    each program."""
    backward = report = None
    if joint is not None:
        graph, bw, report = partition(graph, joint)
        backward = _optimize_and_fuse(bw, fused)
    return CompiledProgram(_optimize_and_fuse(graph, fused), backward, report)


def _optimize_and_fuse(graph: Graph, fused: bool) -> CompiledPart:
    optimized, stats = _optimize(graph, fused)
    return CompiledPart(optimized, stats, fuse(optimized) if fused else None)


def _optimize(graph: Graph, fused: bool) -> tuple[Graph, list]:
    """Cleanup to a fixed point, then sums of padded pieces concatenated and sums of thin
    matmuls merged into one; before fusing, eager-only primitives are decomposed first, and
    slices of elementwise results sunk into the elementwise ops (then cleaned up again)."""
    stats = []
    if fused:
        before = len(graph.nodes)
        graph = decompose(graph)
        stats.append(PassStat("decompose", before, len(graph.nodes)))
    optimized, cleanup = optimize(graph)
    if fused:
        sunk = sink_slices(optimized)
        stats += cleanup + [PassStat("sink_slices", len(optimized.nodes), len(sunk.nodes))]
        cleanup = []
        if sunk is not optimized:
            optimized, cleanup = optimize(sunk)
    catted = concatenate_padded_sums(optimized)
    merged = merge_matmul_sums(catted)
    return merged, stats + cleanup + [
        PassStat("concatenate_padded_sums", len(optimized.nodes), len(catted.nodes)),
        PassStat("merge_matmul_sums", len(catted.nodes), len(merged.nodes))]


__all__ = ["CompiledPart", "CompiledProgram", "PassReport", "PassStat", "compile_passes",
           "run_passes"]
