"""Writes what the compiler captured, per compiled function: listings, DOT, SVG and HTML.

Used by `kiln dump script.py` and by `KILN_DUMP=DIR` for any program. Each stage of the
pipeline adds a section to the same report: the traced graph, then the compiled entry's
CompiledArtifact (`kiln.compiler.artifact`): per part the optimized graph, the launch order and
the exact kernel sources its executor built and launches.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

from kiln.compiler import cuda_graph_notes, kernel_choices
from kiln.compiler.artifact import compile_artifact

FORMATS = ("text", "dot", "svg", "html")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "fn"


def program_sections(program, artifact=None, eager: bool = False) -> list[tuple[str, str]]:
    """(title, text) sections describing one captured program, in pipeline order.

    `artifact`: the CompiledArtifact of the compiled entry that runs `program`; what it prints
    (optimized graphs, launch order, buffers, kernel sources) is read off the executors that
    run, never rendered again. A program no compiled function holds (a `kiln.compiler.trace`
    segment) is compiled here, once for C and once for Triton, and those artifacts printed;
    unless `eager`: a compiled function runs it eagerly (a graph break), so nothing is built.
    """
    sections = [("traced graph", str(program.graph))]
    bindings = []
    for v, b in zip(program.graph.inputs, program.bindings):
        where = (f" (argument {b.path})" if b.kind == "arg" else
                 f" (.grad of {program.graph.inputs[b.path].ref})" if b.kind == "grad" else
                 f" (number argument {v.name} lifted to an input: read each call as "
                 f"{b.draw.name})" if b.kind == "number" and b.path[0] not in ("expr", "state")
                 else f" (a number in Python state the call changes: read each call as "
                 f"{b.draw.name})" if b.kind == "number" and b.path[0] == "state" else
                 f" (a number computed from lifted numbers: computed each call, read as "
                 f"{b.draw.name})" if b.kind == "number" else "")
        bindings.append(f"{v.ref}: {b.kind}{where}")
    if bindings:
        sections.append(("inputs", "\n".join(bindings)))
    if not program.complete:
        sections.append(("note", "this graph ends at a graph break; see the report's breaks"))
    if artifact is not None:
        return sections + artifact_sections(artifact)
    if eager:
        return sections + [("not compiled", "this graph runs eagerly: no kernels are built "
                            "or launched for it (the guards section says why)")]
    try:
        c, triton = compile_artifact(program, "c"), compile_artifact(program, "triton")
    except Exception as e:          # report it: the dump is how one debugs the passes
        return sections + [("passes failed", f"{type(e).__name__}: {e}")]
    sections.append(("note", "not run by a compiled function: compiled here for C and for "
                     "Triton (on the CPU); these are the kernels each would build and launch"))
    sections += artifact_sections(c)
    sections.append(("generated kernels (Triton)", triton.parts[0].kernels_text()))
    return sections


def artifact_sections(artifact) -> list[tuple[str, str]]:
    """The artifact's own sections, and each part's fusion groups as DOT."""
    sections = artifact.sections()
    for part in artifact.parts:
        dot = part.dot()
        if dot is not None:
            pre = "" if part.name in ("program", "forward") else f"{part.name}: "
            sections.append((f"{pre}fusion groups (DOT)", dot))
    return sections


def artifact_of(compiled, program):
    """The CompiledArtifact of the entry of `compiled` that traced `program`, or None."""
    if compiled is None:
        return None
    for entry in compiled.entries.values():
        if entry.traced is program:
            return entry.artifact
    return None


def compiled_notes(compiled) -> list[tuple[str, str]]:
    """Guards of each compiled entry, why any of them runs eagerly, and which way each fused
    group runs after its trial replays."""
    lines = []
    for i, ((key, _), entry) in enumerate(compiled.entries.items()):
        tensors, aliases, grad_mode, autocast, tree, default_dtype, default_device, own = key
        tensors = [(list(shape), [s // max(dtype.itemsize, 1) for s in strides], dtype.name,
                    str(device), requires_grad)
                   for shape, strides, dtype, device, requires_grad in tensors]
        autocast = ", ".join(f"{d} {name}" for d, name in autocast or ()) or "off"
        lines.append(f"entry {i}: tensors (shape, stride, dtype, device, requires_grad) "
                     f"{tensors}; "
                     f"shared memory {list(aliases) or 'none'}; grad mode {grad_mode}; "
                     f"autocast {autocast}; python arguments {tree!r}; default dtype "
                     f"{default_dtype.name}, device {default_device}" +
                     (f"; tensors' own attributes {own!r}" if own else ""))
        lines.append(f"  -> {'compiled' if entry.program is not None else 'eager: '}"
                     f"{entry.eager_reason or ''} ({entry.calls} replays)")
        lines += [f"  guard: {g.describe()}" for g in entry.guards]
    notes = [("guards", "\n".join(lines))] if lines else []
    choices = kernel_choices(compiled)     # known once the trial replays ran (`kiln dump`)
    if choices:
        notes.append(("kernels: generated C or NumPy, as the trial replays measured",
                      "\n".join(choices)))
    graphs = cuda_graph_notes(compiled)     # on a GPU: replayed as a CUDA graph, or why not
    if graphs:
        notes.append(("cuda graphs", "\n".join(graphs)))
    return notes


def pipeline_sections(program, compiled=None) -> list[tuple[str, str]]:
    """(title, text) per named step of the compiler's pipeline (`kiln.passes.pipeline.STEPS`)
    and part: the graph, schedule or lowered program that step made, for the compiled entry of
    `compiled` that traced `program` (compiled here for C when none did)."""
    artifact = artifact_of(compiled, program)
    if artifact is None:
        if compiled is not None:
            return [("pipeline", "this graph runs eagerly: no pipeline step ran for it")]
        artifact = compile_artifact(program, "c")
    sections = artifact.pipeline_sections()
    return sections or [("pipeline", "the steps ran in another process (their results were "
                         "read from the program cache): rerun with `kiln dump --passes`")]


def write_programs(directory, name: str, programs: list, formats=FORMATS,
                   breaks: list | None = None, notes: list | None = None,
                   compiled=None, passes: bool = False) -> list[Path]:
    """Write the report files for one function's programs; returns the paths written.
    `compiled`: the CompiledFunction that traced them, whose artifacts are printed; `passes`:
    add what each pipeline step made (`pipeline_sections`)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, program in enumerate(programs):
        stem = _slug(name) + (f".{i}" if len(programs) > 1 else "")
        artifact = artifact_of(compiled, program)
        sections = program_sections(program, artifact, eager=compiled is not None and
                                    artifact is None) + list(notes or [])
        if passes:
            sections += pipeline_sections(program, compiled)
        text = "\n\n".join(f"== {title} ==\n{body}" for title, body in sections)
        if breaks:
            text += "\n\n== graph breaks ==\n" + "\n".join(
                f"{b.reason} at {b.location}" for b in breaks)
        if "text" in formats:
            written.append(_write(out / f"{stem}.txt", text + "\n"))
        dot_text = program.graph.to_dot()
        svg = None
        if "dot" in formats or "svg" in formats or "html" in formats:
            written.append(_write(out / f"{stem}.dot", dot_text + "\n"))
            fused = dict(sections).get("fusion groups (DOT)")
            if fused is not None:       # the optimized graph, one colour per fused kernel
                written.append(_write(out / f"{stem}.fused.dot", fused + "\n"))
        if "svg" in formats or "html" in formats:
            svg = render_svg(dot_text)
            if svg is not None:
                written.append(_write(out / f"{stem}.svg", svg))
            elif "svg" in formats:
                written.append(_write(out / f"{stem}.svg.txt", NO_GRAPHVIZ + "\n"))
        if "html" in formats:
            written.append(_write(out / f"{stem}.html", _html(name, sections, svg)))
    return written


NO_GRAPHVIZ = ("SVG not written: Graphviz's `dot` is not on the PATH. Install it "
               "(`apt-get install graphviz` or `brew install graphviz`) or render the .dot file "
               "elsewhere.")


def render_svg(dot_text: str) -> str | None:
    exe = shutil.which("dot")
    if exe is None:
        return None
    done = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True,
                          timeout=60)
    return done.stdout if done.returncode == 0 else None


def _write(path: Path, text: str) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _html(name: str, sections, svg) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>kiln dump: {html.escape(name)}"
             "</title><body style='font-family:sans-serif'>",
             f"<h1>{html.escape(name)}</h1>"]
    for title, body in sections:
        if title == "generated kernels (C)" and "generated kernels (Triton)" in dict(sections):
            continue                    # shown beside the Triton source
        block = f"<h2>{html.escape(title)}</h2><pre>{html.escape(body)}</pre>"
        if title == "generated kernels (Triton)" and "generated kernels (C)" in dict(sections):
            c_body = dict(sections)["generated kernels (C)"]
            block = ("<div style='display:flex;gap:1em'><div style='flex:1;overflow:auto'>"
                     f"{block}</div><div style='flex:1;overflow:auto'><h2>generated kernels "
                     f"(C)</h2><pre>{html.escape(c_body)}</pre></div></div>")
        parts.append(block)
    parts.append(svg if svg is not None else f"<p>{html.escape(NO_GRAPHVIZ)}</p>")
    parts.append("</body>")
    return "\n".join(parts)
