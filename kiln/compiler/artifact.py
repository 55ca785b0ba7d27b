"""The record of one compiled program: what was traced, what the passes made of it, what runs.

A `CompiledArtifact` is read off the executors a compiled entry actually runs (never rebuilt by
re-running the passes or the renderers), so what `kiln dump` and `explain` print is what runs:
per part (the forward, and the backward of a partitioned joint trace) the optimized graph, the
fusion schedule, and in launch order each step as the executor runs it, with the exact source
of every generated kernel it built and launches.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.codegen.lower import VIEWS_ONLY
from kiln.compiler import compile_program


@dataclass(frozen=True)
class LaunchStep:
    """One step of an executor, as it runs: `kind` is "c" or "triton" (a generated kernel,
    `source` the exact text built and launched), "view" (a strided view, no copy), "extern"
    (a library call: `op`), or "array" (the array executor runs `what` eagerly)."""

    kind: str
    name: str
    source: str | None
    inputs: tuple           # value refs (`%x`) in the part's optimized graph
    outputs: tuple
    what: str = ""          # the one-line description printed for a step without source
    buffers: tuple = ()     # per output, the array it is written into
    number: str = ""        # a fused kernel's number in the schedule (k0, k6a), else ""

    def header(self, index: int) -> str:
        """`step 3: k2 c kernel k2_fused_mul_add (%4, %w) -> %7`."""
        args = f"({', '.join(self.inputs)}) -> {', '.join(self.outputs)}"
        text = " ".join(t for t in (self.number, self.what or self.kind, self.name, args) if t)
        return f"step {index}: {text}"


@dataclass(frozen=True)
class ArtifactPart:
    """One program an executor runs: the forward, the backward, or a whole forward-only one."""

    name: str                   # "forward", "backward", or "program"
    target: str                 # "c", "triton" or "numpy"
    graph: object               # the optimized Graph
    stats: tuple                # PassStat per pass application
    schedule: object            # the fusion Schedule, or None on the array executor
    steps: tuple                # LaunchStep, in launch order
    module_source: str | None   # the C translation unit built, for target "c"
    memory: str = ""            # the memory plan: the kept buffers the executor allocates
    pipeline: tuple = ()        # (step name, its result printed) per pipeline step run

    @property
    def kernels(self) -> tuple:
        """The generated kernels launched, in launch order."""
        return tuple(s for s in self.steps if s.source is not None)

    def stats_text(self) -> str:
        lines = [f"{'pass':<16} {'nodes':>5}"] + [str(s) for s in self.stats]
        if self.stats:
            before = self.stats[0].nodes_before
            lines.append(f"{'total':<16} {before:>5} -> {len(self.graph.nodes)}")
        return "\n".join(lines)

    def steps_text(self) -> str:
        return "\n".join(s.header(i) for i, s in enumerate(self.steps)) or "(no steps)"

    def buffers_text(self) -> str:
        """The executor's own buffers: what each step writes its outputs into."""
        lines = []
        for i, s in enumerate(self.steps):
            for v, b in zip(s.outputs, s.buffers):
                lines.append(f"step {i} {v}: {b}")
        return "\n".join(lines) or "(none)"

    def kernels_text(self) -> str:
        """Every generated kernel's source, exactly as built and launched, in launch order,
        each under a `---- step i: ...` line; for C, first what the translation unit built
        holds before the kernels (includes, helpers)."""
        kernels = self.kernels
        if not kernels:
            return "(no generated kernels)"
        before = ""
        if self.module_source is not None:
            before = self.module_source[:self.module_source.index(kernels[0].source)]
        return before + "\n".join(f"{_comment(self.target)} ---- {s.header(i)}\n{s.source}"
                                   for i, s in enumerate(self.steps) if s.source is not None)

    def dot(self) -> str | None:
        if self.schedule is None:
            return None
        return self.graph.to_dot(groups=self.schedule.groups())


def _comment(target: str) -> str:
    return "//" if target == "c" else "#"


@dataclass(frozen=True)
class CompiledArtifact:
    """What one compiled entry traced and runs. `parts` holds the forward (or the whole program
    when there is no backward) and the backward; `partition` says what the forward saves for
    the backward, when there is one."""

    traced: object              # the traced Graph (the joint forward+backward one, if any)
    bindings: tuple             # tracer Binding per traced graph input
    complete: bool              # False when the trace ended at a graph break
    target: str
    parts: tuple                # ArtifactPart
    partition: object = None    # PartitionReport, or None

    def part(self, name: str) -> ArtifactPart:
        return next(p for p in self.parts if p.name == name)

    def sections(self) -> list[tuple[str, str]]:
        """(title, text) sections in pipeline order: what `kiln dump` and `explain` print."""
        out = []
        if self.partition is not None:
            out.append(("partition", str(self.partition)))
        for p in self.parts:
            pre = "" if p.name == "program" else f"{p.name}: "
            out.append((f"{pre}optimized graph", str(p.graph)))
            out.append((f"{pre}pass statistics", p.stats_text()))
            if p.schedule is not None:
                out.append((f"{pre}fusion groups", str(p.schedule)))
            out.append((f"{pre}launch order ({p.target})", p.steps_text()))
            out.append((f"{pre}executor buffers", p.buffers_text()))
            if p.memory:
                out.append((f"{pre}memory plan", p.memory))
            out.append((f"{pre}generated kernels ({_TARGET_TITLE[p.target]})", p.kernels_text()))
        return out


    def pipeline_sections(self) -> list[tuple[str, str]]:
        """(title, text) per named pipeline step and part: the graph (or schedule, or lowered
        program) each step made, in order: what `kiln dump --passes` prints."""
        out = []
        for p in self.parts:
            pre = "" if p.name == "program" else f"{p.name}: "
            out += [(f"{pre}step {i} {name}", text) for i, (name, text) in
                    enumerate(p.pipeline)]
        return out


_TARGET_TITLE = {"c": "C", "triton": "Triton", "numpy": "none: array executor"}


def build_artifact(traced, compiled, executors: dict, target: str) -> CompiledArtifact:
    """The artifact of a traced program (`traced`: a TracedProgram) compiled to `compiled` (a
    CompiledProgram) and run by `executors` ({"forward": ..., "backward": ...})."""
    parts = []
    for name in ("forward", "backward"):
        part = getattr(compiled, name)
        if part is None:
            continue
        label = name if compiled.backward is not None else "program"
        parts.append(_part(label, target, part, executors[name]))
    return CompiledArtifact(traced.graph, tuple(traced.bindings), traced.complete, target,
                            tuple(parts), compiled.partition)


def _part(label: str, target: str, part, executor) -> ArtifactPart:
    graph = part.graph
    pipeline = tuple(part.steps_text()) if hasattr(part, "steps_text") else ()
    if part.lowered is None or not hasattr(executor, "launch_plan"):
        step = LaunchStep("array", graph.name, None, tuple(v.ref for v in graph.inputs),
                          tuple(v.ref for v in graph.outputs), what="array executor runs graph",
                          buffers=("allocated per call",) * len(graph.outputs))
        return ArtifactPart(label, "numpy", graph, tuple(part.stats), None, (step,), None,
                            pipeline=pipeline)
    steps = []
    into = {spec[0] for spec in part.lowered.into.values()}
    for s in executor.launch_plan():
        kind, lowered = s["kind"], s["lowered"]
        buffers = []
        for b, o, over in zip(s["buffers"], lowered.outs,
                              lowered.in_place or (None,) * len(s["outputs"])):
            if kind == "triton":
                buffers.append("kept by its launcher from call to call (a new array when the "
                               "last is still held)")
            elif b is not None:
                buffers.append(f"buffer {b} of the memory plan" + (
                    ", or the caller's array (run(into=))" if o in into else ""))
            elif over is not None and kind == "c":
                buffers.append("its source's memory (in place), else allocated per call")
            else:
                buffers.append("allocated per call")
        if kind in ("c", "triton"):
            what = f"{kind} kernel"
            if kind == "triton" and s["why"]:     # a convolution's route (kiln.codegen.conv)
                what += f" ({s['why']})"
        elif kind == "matmul":
            kind, what = "extern", "extern matmul"
            views = getattr(s["lowered"], "view", None)
            if views is not None:
                what += " of " + ", ".join("a " + v[0] for v in views if v is not None) + \
                    " view of its operands"
            if s["buffers"][0] is not None:
                what += " (into a kept buffer)"
            if s["why"]:                            # a convolution left on the unfold route
                what += f" ({s['why']})"
        elif kind == "view" or s["why"] == VIEWS_ONLY:
            kind, what = "view", "view (no copy)"
            buffers = ["a view of its input"] * len(s["outputs"])
        elif kind == "numpy":
            what = "array executor (NumPy beat its C kernel in the trial replays)"
        elif not s["number"]:
            kind, what = "extern", f"extern {s['name']}"
        else:
            what = f"array executor ({s['why']})"
        steps.append(LaunchStep(kind, s["name"] if kind != "extern" else "", s["source"],
                                s["inputs"], s["outputs"], what, tuple(buffers), s["number"]))
    return ArtifactPart(label, executor.target, graph, tuple(part.stats), part.schedule,
                        tuple(steps), executor.module_source, part.lowered.memory_text(),
                        pipeline)


def compile_artifact(program, target: str) -> CompiledArtifact:
    """Compile a traced program that no compiled function holds (a segment from
    `kiln.compiler.trace`) for `target` on the CPU, and return its artifact."""
    import numpy as np

    compiled, forward, _ = compile_program(program.graph, None, target, np)
    return build_artifact(program, compiled, {"forward": forward}, target)


__all__ = ["ArtifactPart", "CompiledArtifact", "LaunchStep", "build_artifact",
           "compile_artifact"]
