"""`explain`: what a compiled function captured, where it broke and what runs, as a report."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from kiln.compiler import guards
from kiln.compiler.function import CompiledFunction
from kiln.compiler.numbers import _lifted_names, _number_write
from kiln.compiler.tracing import _function_name, trace


@dataclass
class ExplainOutput:
    """A report in the spirit of torch._dynamo.explain: the graphs captured, the breaks, the
    guards, and per graph the CompiledArtifact that runs it (None when it runs eagerly)."""

    graphs: list
    breaks: list
    name: str = ""
    guards: list = field(default_factory=list)     # Guard: what a replay would check
    artifacts: list = field(default_factory=list)  # per graph: CompiledArtifact or None
    eager_reason: str | None = None                # why the function runs eagerly, if it does
    # how each fused group of the compiled function's programs runs (C or NumPy) and why,
    # decided by timing both on its first replays; empty before those replays
    kernel_choices: list = field(default_factory=list)
    cuda_graphs: list = field(default_factory=list)   # cuda_graph_notes: per GPU program
    after_replay: list = field(default_factory=list)  # names of Python steps replays repeat
    lifted: list = field(default_factory=list)        # number arguments read as graph inputs

    @property
    def graph_count(self) -> int:
        return len(self.graphs)

    @property
    def graph_break_count(self) -> int:
        return len(self.breaks)

    @property
    def op_count(self) -> int:
        return sum(len(g.nodes) for g in self.graphs)

    # torch._dynamo.explain's ExplainOutput names for the same facts
    @property
    def break_reasons(self) -> list:
        """Each graph break (its `.reason` and `.location`), in the order the call met them."""
        return self.breaks

    @property
    def ops_per_graph(self) -> list:
        return [[node.op for node in g.nodes] for g in self.graphs]

    @property
    def out_guards(self) -> list:
        return self.guards

    def __str__(self) -> str:
        lines = [f"kiln.compiler.explain: {self.name}",
                 f"  graphs: {self.graph_count}   graph breaks: {self.graph_break_count}   "
                 f"ops: {self.op_count} ({' + '.join(str(len(g.nodes)) for g in self.graphs)})"]
        for i, b in enumerate(self.breaks, 1):
            lines.append(f"  break {i}: {b.reason}")
            lines.append(f"           at {b.location}")
        if self.guards:
            lines.append(f"  guards ({len(self.guards)}; a replay runs only while all hold):")
            lines += [f"    {g.describe()}" for g in self.guards]
        if self.lifted:
            lines.append("  number arguments lifted to graph inputs (a new value replays, "
                         "no trace): " + ", ".join(self.lifted))
        if self.after_replay:
            lines.append("  after each replay, as the traced call did: " +
                         ", ".join(self.after_replay))
        if self.kernel_choices:
            lines.append("  kernels of the compiled programs, as their trial replays decided:")
            lines += [f"    {line}" for line in self.kernel_choices]
        if self.cuda_graphs:
            lines.append("  CUDA graphs of the compiled programs on a GPU:")
            lines += [f"    {line}" for line in self.cuda_graphs]
        for i, g in enumerate(self.graphs):
            artifact = self.artifacts[i] if i < len(self.artifacts) else None
            lines += ["", str(g)]
            if artifact is None:
                lines += ["", f"-- runs eagerly: {self.eager_reason or 'not compiled'} --"]
                continue
            for title, body in artifact.sections():
                lines += ["", f"-- {title} --", body]
        return "\n".join(lines)


def explain(fn, *args, **kwargs) -> ExplainOutput:
    """Compile `fn` once on these arguments (running it, as a compiled function's first call
    does) and print what was captured, where it broke, and the compiled artifact that runs.

    When the call does not compile (a graph break, a Python effect), `fn` is traced once more,
    split at each break, to list every graph; those run eagerly, so no artifact is printed.
    """
    out = explain_report(fn, args, kwargs)
    print(out)
    return out


def explain_report(fn, args: tuple, kwargs: dict) -> ExplainOutput:
    """`explain`'s report without printing it (torch._dynamo.explain returns it silently)."""
    fn = getattr(fn, "_compiled", fn)           # a compiled Module: its CompiledFunction
    target = fn.fn if isinstance(fn, CompiledFunction) else fn
    compiled = CompiledFunction(target, getattr(fn, "backend", "auto"))
    if isinstance(fn, CompiledFunction):        # the numbers it lifted stay lifted
        compiled._lifted = dict(fn._lifted)
        compiled._state_lifted = dict(fn._state_lifted)
    with warnings.catch_warnings():     # a break or a fallback is in the report itself
        warnings.simplefilter("ignore")
        compiled(*args, **kwargs)
    done = [e for e in compiled.entries.values() if e.artifact is not None]
    if done:
        entry = done[-1]
        out = ExplainOutput([entry.traced.graph], [], _function_name(target), entry.guards,
                            [entry.artifact], kernel_choices=kernel_choices(fn),
                            cuda_graphs=cuda_graph_notes(fn) or cuda_graph_notes(compiled),
                            after_replay=[name for name, _ in entry.program.after_replay] +
                            [f"{name} = (a tensor the program computes)"
                             for name, *_ in entry.program.attribute_writes] +
                            [f"{name} = {_number_write(where, value)}"
                             for name, _, where, value in entry.program.number_writes],
                            lifted=_lifted_names(entry.program))
    else:
        reasons = [e.eager_reason for e in compiled.entries.values() if e.eager_reason]
        captured = trace(target, *args, **kwargs)
        out = ExplainOutput(captured.graphs, captured.breaks, _function_name(target),
                            guards.collect(target, by_name=True).guards,
                            [None] * len(captured.graphs),
                            reasons[0] if reasons else None, kernel_choices(fn))
    return out


def cuda_graph_notes(fn) -> list:
    """Per program of a compiled function that runs on a GPU, whether it replays as a CUDA graph
    (`forward cuda graph: captured (N kernels, X MB; R replays)`) or why not, then the launch
    configuration of each kernel tuned on this GPU (`kiln.runtime.triton_tune`)."""
    lines = []
    for entry in getattr(fn, "entries", {}).values():
        for part, executor in (("forward", entry.executor), ("backward", entry.backward)):
            runner = getattr(executor, "cuda_graph", None)
            if runner is not None:
                lines.append(f"{part} {runner.describe()}")
            for step in getattr(executor, "triton_steps", {}).values():
                tuning = getattr(step.launcher, "tuning", None)
                if tuning is not None:
                    lines.append(f"{part} launch configuration {tuning.describe()}")
    return lines


def kernel_choices(fn) -> list:
    """Per fused group of a compiled function's programs so far, whether it runs as generated
    C or on NumPy and the trial times behind that (lines; none before the trials are over)."""
    lines = []
    for entry in getattr(fn, "entries", {}).values():
        for part, executor in (("forward", entry.executor), ("backward", entry.backward)):
            for choice in getattr(executor, "choices", ()):
                lines.append(f"{part} {choice.describe()}")
    return lines
