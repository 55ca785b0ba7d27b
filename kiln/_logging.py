"""`torch._logging.set_logs`: print what kiln.compile captured and built, as TORCH_LOGS does for
PyTorch's compiler. kiln's own listing (the sections `kiln dump` writes) is the log:

- `dynamo`: a line per captured program (function, graph size, inputs), at that level;
- `graph`: the traced graph; `fusion`: the fusion groups; `output_code`: the generated kernels;
- `graph_breaks` / `recompiles`: the traced graph's break note and each new capture's line.

Messages go to the `kiln._logging` logger (a stderr handler is added on first use, as PyTorch
logs to stderr). `set_logs()` with no arguments turns every one off."""

from __future__ import annotations

import logging

_LOG = logging.getLogger("kiln._logging")
_SETTINGS: dict = {}


def _sections_wanted() -> list[str]:
    wanted = []
    for flag, titles in (("graph", ("traced graph",)), ("fusion", ("fusion groups",)),
                         ("output_code", ("generated kernels",))):
        if _SETTINGS.get(flag):
            wanted += titles
    return wanted


def _sink(compiled, programs) -> None:
    from kiln import dump
    from kiln.compiler.tracing import _function_name
    for program in programs:
        if _SETTINGS.get("dynamo") is not None or _SETTINGS.get("recompiles"):
            _LOG.log(_SETTINGS.get("dynamo") or logging.INFO,
                     "captured %s: %d nodes, %d inputs%s", _function_name(compiled.fn),
                     len(program.graph.nodes), len(program.graph.inputs),
                     "" if program.complete else " (ends at a graph break)")
        wanted = _sections_wanted()
        if not wanted and not (_SETTINGS.get("graph_breaks") and not program.complete):
            continue
        artifact = dump.artifact_of(compiled, program)
        for title, body in dump.program_sections(program, artifact, eager=artifact is None):
            shown = any(title.startswith(w) and "(DOT)" not in title for w in wanted) or (
                title == "note" and _SETTINGS.get("graph_breaks"))
            if shown:
                _LOG.info("== %s: %s ==\n%s", _function_name(compiled.fn), title, body)


def set_logs(*, dynamo: int | None = None, graph: bool = False, fusion: bool = False,
             output_code: bool = False, graph_breaks: bool = False, recompiles: bool = False,
             **others) -> None:
    """Turn kiln's compile logs on (the flags given) and every other one off. Flags PyTorch
    has that kiln has nothing to report for (aot, inductor, ...) are accepted and ignored."""
    from kiln.compiler.function import _DUMP_SINKS
    _SETTINGS.clear()
    _SETTINGS.update(dynamo=dynamo, graph=graph, fusion=fusion, output_code=output_code,
                     graph_breaks=graph_breaks, recompiles=recompiles)
    on = dynamo is not None or any((graph, fusion, output_code, graph_breaks, recompiles))
    while _sink in _DUMP_SINKS:
        _DUMP_SINKS.remove(_sink)
    if on:
        _DUMP_SINKS.append(_sink)
        if not _LOG.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            _LOG.addHandler(handler)
        _LOG.setLevel(min(dynamo if dynamo is not None else logging.INFO, logging.INFO))
        _LOG.propagate = False
