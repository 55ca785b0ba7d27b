"""The compiler's pipeline as one straight list of named steps (`STEPS`), from trace to lowered.

`compile_passes` is what the compiler runs on a traced graph: partition (a joint trace),
decompose, cleanup, fuse, split gathers, lower (`kiln.codegen.lower.lower_schedule`, handed in)
and plan memory (`kiln.passes.memory.plan_buffers`), keeping each step's result as a snapshot
(`kiln dump --passes` prints them). `run_passes(graph)` runs the graph passes on one graph with
a report, for studying them (benchmarks, tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir.graph import Graph
from kiln.passes.cleanup import PassStat, optimize
from kiln.passes.conv_products import form_conv_products
from kiln.passes.decompose import decompose
from kiln.passes.fusion import Schedule, fuse, split_gathers
from kiln.passes.matmul_sums import merge_matmul_sums
from kiln.passes.memory import MemoryPlan, in_place_updates, inputs_read, plan_buffers, plan_memory
from kiln.passes.pad_sums import concatenate_padded_sums
from kiln.passes.partition import PartitionReport, partition
from kiln.passes.permute_sinking import sink_permutes
from kiln.passes.slice_sinking import sink_slices
from kiln.passes.stack_reshapes import concatenate_before_reshapes


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


# The compiler's pipeline, in order; each step's result is kept as a snapshot (`kiln dump
# --passes` prints them). "partition" runs only on a joint forward+backward trace, then the rest
# once per program; "lower" is `kiln.codegen.lower.lower_schedule`, handed in by the compiler
# (passes import no codegen).
STEPS = ("partition", "decompose", "cleanup", "form conv products", "sink permutes",
         "sink slices", "concatenate before reshapes", "concatenate padded sums",
         "merge matmul sums", "fuse", "split gathers", "lower", "plan memory")


@dataclass
class CompiledPart:
    """One program the compiler runs: its optimized graph, how it got there, how it is fused,
    and what runs (the lowered program, with its memory plan)."""

    graph: Graph                        # the optimized graph
    stats: list                         # PassStat per pass application
    schedule: Schedule | None = None    # the fused program; None for the NumPy executor
    lowered: object = None              # LoweredProgram (kiln.codegen.lower): what runs
    snapshots: list = field(default_factory=list)   # (step name, its result) in STEPS order
    # per output, where its memory comes from (`kiln.compiler.outputs.output_roots`): kept with the
    # program so that a warm start need not decode the graph's nodes to know it
    output_roots: tuple | None = None

    def steps_text(self) -> list[tuple[str, str]]:
        """(step name, what it made, printed) per pipeline step this part ran."""
        out, before = [], None
        for name, made in self.snapshots:
            out.append((name, "(unchanged: nothing to do)" if made is before else
                        _snapshot_text(name, made)))
            before = made
        return out


class _Listing:
    """A schedule printed with its kernels' numbers (k1a, k1b: the parts of a split k1)."""

    def __init__(self, schedule: Schedule, numbers: list):
        self.schedule, self.numbers = schedule, numbers

    def __str__(self) -> str:
        return self.schedule.listing(self.numbers)


def _snapshot_text(name: str, made) -> str:
    if name == "plan memory":
        return made.memory_text()
    return str(made)


@dataclass
class CompiledProgram:
    """What the passes made of one traced graph: a forward program and, when the graph was a
    joint forward+backward trace, the backward program and what the partition saved."""

    forward: CompiledPart
    backward: CompiledPart | None = None
    partition: PartitionReport | None = None


def compile_passes(graph: Graph, joint=None, fused: bool = True,
                   lower=None, conv_products: bool = True, thin_kept=None,
                   pieces: bool = False) -> CompiledProgram:
    """Run the pipeline's STEPS on a traced graph: partition a joint graph (`joint`: its
    JointInfo), then per program decompose, clean up and, when `fused`, fuse; with `lower` (a
    `lower_schedule` bound to its target), also split the gathers, lower and plan memory.
    `conv_products=False` leaves a convolution's unfold and fold apart from its products (for
    the exported C library, which spells those and not the NumPy backend's fused products).
    `thin_kept(m, k, n, dtype)`: the thin products the target computes as they are (`fuse`);
    `pieces`: kernels store padded pieces in place in their sum (`fuse`)."""
    backward = report = None
    if joint is not None:
        if conv_products:           # before the cut: the backward then needs a conv's input,
            graph = form_conv_products(graph)      # not its windows, from the forward
        graph, bw, report = partition(graph, joint)
        backward = compile_part(bw, fused, lower, [("partition", bw)], conv_products,
                                thin_kept, pieces)
    forward = compile_part(graph, fused, lower, [("partition", graph)] if joint else [],
                           conv_products, thin_kept, pieces)
    return CompiledProgram(forward, backward, report)


def compile_part(graph: Graph, fused: bool = True, lower=None,
                 snapshots: list | None = None, conv_products: bool = True,
                 thin_kept=None, pieces: bool = False) -> CompiledPart:
    """The pipeline's steps after "partition" on one program; see `compile_passes`."""
    snapshots = list(snapshots or [])
    if not fused:
        optimized, stats = optimize(graph)
        snapshots.append(("cleanup", optimized))
        if conv_products:
            optimized = _conv_products(optimized, stats, snapshots)
        optimized = _sums(optimized, stats, snapshots)
        return CompiledPart(optimized, stats, snapshots=snapshots)
    decomposed = decompose(graph)
    snapshots.append(("decompose", decomposed))
    optimized, stats = optimize(decomposed)
    snapshots.append(("cleanup", optimized))
    stats = [PassStat("decompose", len(graph.nodes), len(decomposed.nodes))] + stats
    if conv_products:
        optimized = _conv_products(optimized, stats, snapshots)
    optimized = _permutes(optimized, stats, snapshots)
    sunk = sink_slices(optimized)
    stats.append(PassStat("sink_slices", len(optimized.nodes), len(sunk.nodes)))
    if sunk is not optimized:           # the per-slice ops leave work for cleanup
        sunk, more = optimize(sunk)
        stats += more
    snapshots.append(("sink slices", sunk))
    optimized = _sums(sunk, stats, snapshots)
    schedule = fuse(optimized, thin_kept=thin_kept, pieces=pieces)
    snapshots.append(("fuse", schedule))
    part = CompiledPart(optimized, stats, schedule, snapshots=snapshots)
    if lower is not None:
        lower_part(part, lower)
    return part


def _conv_products(graph: Graph, stats: list, snapshots: list) -> Graph:
    """The step that makes a convolution's products with their unfold or fold one primitive."""
    formed = form_conv_products(graph)
    stats.append(PassStat("form_conv_products", len(graph.nodes), len(formed.nodes)))
    snapshots.append(("form conv products", formed))
    return formed


def _permutes(graph: Graph, stats: list, snapshots: list) -> Graph:
    """The step that runs elementwise ops in the order of the permuted values they read, so
    the permute meets its reader (a conv product's image, an inverse permute) below them."""
    sunk = sink_permutes(graph)
    stats.append(PassStat("sink_permutes", len(graph.nodes), len(sunk.nodes)))
    if sunk is not graph:               # permutes of permutes, reshapes of reshapes
        sunk, more = optimize(sunk)
        stats += more
    snapshots.append(("sink permutes", sunk))
    return sunk


def _sums(graph: Graph, stats: list, snapshots: list) -> Graph:
    """The steps that merge concatenations and sums: a stack of reshaped steps into a reshape
    of their concatenation, padded pieces side by side into a concatenation, thin matmuls (a
    weight's gradient over a loop's steps) into one matmul."""
    stacked = concatenate_before_reshapes(graph)
    stats.append(PassStat("concatenate_before_reshapes", len(graph.nodes), len(stacked.nodes)))
    if stacked is not graph:            # a reshape of the stack meets its readers' reshapes
        stacked, more = optimize(stacked)
        stats += more
    snapshots.append(("concatenate before reshapes", stacked))
    catted = concatenate_padded_sums(stacked)
    snapshots.append(("concatenate padded sums", catted))
    merged = merge_matmul_sums(catted)
    snapshots.append(("merge matmul sums", merged))
    stats += [PassStat("concatenate_padded_sums", len(stacked.nodes), len(catted.nodes)),
              PassStat("merge_matmul_sums", len(catted.nodes), len(merged.nodes))]
    return merged


def lower_part(part: CompiledPart, lower) -> CompiledPart:
    """The pipeline's last steps on a fused part: split the gathers, lower (`lower`: a
    `lower_schedule` bound to its target) and plan the lowered program's memory."""
    split, numbers = split_gathers(part.schedule)
    part.snapshots.append(("split gathers", split if split is part.schedule else
                           _Listing(split, numbers)))
    lowered = lower(split, numbers=numbers, in_place=in_place_updates(split),
                    reads=inputs_read(split))
    part.snapshots.append(("lower", lowered))
    part.lowered = lowered.with_memory(plan_buffers(lowered))
    part.snapshots.append(("plan memory", part.lowered))
    return part


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
    formed = form_conv_products(optimized)
    cleanup.append(PassStat("form_conv_products", len(optimized.nodes), len(formed.nodes)))
    optimized = formed
    if fused:
        optimized = _permutes(optimized, cleanup, [])
        sunk = sink_slices(optimized)
        stats += cleanup + [PassStat("sink_slices", len(optimized.nodes), len(sunk.nodes))]
        cleanup = []
        if sunk is not optimized:
            optimized, cleanup = optimize(sunk)
    stacked = concatenate_before_reshapes(optimized)
    stats += cleanup + [PassStat("concatenate_before_reshapes", len(optimized.nodes),
                                 len(stacked.nodes))]
    cleanup = []
    if stacked is not optimized:
        stacked, cleanup = optimize(stacked)
    catted = concatenate_padded_sums(stacked)
    merged = merge_matmul_sums(catted)
    return merged, stats + cleanup + [
        PassStat("concatenate_padded_sums", len(stacked.nodes), len(catted.nodes)),
        PassStat("merge_matmul_sums", len(catted.nodes), len(merged.nodes))]


__all__ = ["STEPS", "CompiledPart", "CompiledProgram", "PassReport", "PassStat", "compile_part",
           "compile_passes", "lower_part", "run_passes"]
