"""The `kiln` command line: `kiln demo`, `kiln dump script.py` and `kiln export --target c|onnx
model.kiln OUT` (also `python -m kiln ...`)."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import kiln.onnx
from kiln.export import load
from kiln.export.c_library import build_c_library


def _demo() -> int:
    """Train the digits CNN (examples/digits_cnn.py): about 10 s on 2 cores, >= 97% held out."""
    import importlib.util
    missing = [m for m in ("sklearn", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"kiln demo: the demo needs {', '.join(missing)} (the 'examples' extra): "
              "pip install -e '.[examples]'", file=sys.stderr)
        return 1
    demo = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.py"
    sys.argv = [str(demo)]
    runpy.run_path(str(demo), run_name="__main__")
    return 0


def _dump(script: str, script_args: list, out: str, formats: tuple,
          passes: bool = False, as_torch: bool = True) -> int:
    """Run a script; write a report for every `@kiln.compile` function it called; with
    `passes`, the report holds (and stdout shows) what each step of the pipeline made. With
    `as_torch`, its torch imports resolve to kiln, as in `kiln run`: a PyTorch script's
    `torch.compile` functions are kiln's then (with the real torch there would be none);
    where this process has imported torch already (a caller's), its scripts share it."""
    if as_torch and "torch" not in sys.modules:
        from kiln.as_torch import install
        install()
    from kiln import program_cache
    reading = program_cache.READ
    if passes:          # each step must run in this process to be shown
        program_cache.READ = False
    try:
        return _dump_script(script, script_args, out, formats, passes)
    finally:
        program_cache.READ = reading


def _dump_script(script: str, script_args: list, out: str, formats: tuple,
                 passes: bool) -> int:
    from kiln import dump
    from kiln.compiler.function import _DUMP_SINKS
    from kiln.compiler.tracing import _function_name
    captured: dict = {}
    compiled_of: dict = {}

    def sink(compiled, programs):
        name = getattr(compiled.fn, "__qualname__", _function_name(compiled.fn))
        captured.setdefault(name, []).extend(programs)
        compiled_of[name] = compiled
        entry_breaks = [e.eager_reason for e in compiled.entries.values() if e.eager_reason]
        captured.setdefault("__breaks__" + name, []).extend(entry_breaks)

    _DUMP_SINKS.append(sink)
    sys.argv = [script] + list(script_args)
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        _DUMP_SINKS.remove(sink)
    written = []
    for name, programs in captured.items():
        if name.startswith("__breaks__"):
            continue
        written += dump.write_programs(out, name, programs, formats,
                                       notes=dump.compiled_notes(compiled_of[name]),
                                       compiled=compiled_of[name], passes=passes)
        if passes:
            for program in programs:
                for title, body in dump.pipeline_sections(program, compiled_of[name]):
                    print(f"== {name}: {title} ==\n{body}\n")
        for reason in dict.fromkeys(captured.get("__breaks__" + name, [])):
            print(f"kiln dump: {name} runs eagerly: {reason}")
    if not captured:
        print("kiln dump: the script called no @kiln.compile (or torch.compile) function; "
              "nothing to write")
        return 1
    for path in written:
        print(f"kiln dump: wrote {path}")
    if not any(p.suffix == ".svg" for p in written) and "svg" in formats:
        print("kiln dump: " + dump.NO_GRAPHVIZ)
    return 0


def _export(target: str, program: str, out: str, sizes: list) -> int:
    """Turn a saved exported program into a C library (OUT a folder) or an ONNX file."""
    parsed = {}
    for item in sizes:
        key, _, value = item.partition("=")
        if not value.isdigit():
            print(f"kiln export: --size takes NAME=INT (e.g. batch=64), got {item!r}",
                  file=sys.stderr)
            return 2
        parsed[key] = int(value)
    from kiln.serialization import CheckpointError
    try:
        ep = load(program)
    except (CheckpointError, OSError) as e:
        print(f"kiln export: {e}", file=sys.stderr)
        return 1
    if target == "c":
        lib = build_c_library(ep, out, sizes=parsed or None)
        for path in (lib.source, lib.header, lib.weights, lib.library):
            print(f"kiln export: wrote {path}")
        how = "call CBLAS (link -lopenblas)" if lib.blas else "run as C loops (no cblas.h found)"
        print(f"kiln export: matmuls {how}")
        return 0
    if parsed:
        print("kiln export: --size applies to the C target; ONNX keeps the dynamic sizes",
              file=sys.stderr)
        return 2
    kiln.onnx.export(ep, (), out)
    print(f"kiln export: wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"] and len(argv) > 1 and not argv[1].startswith("-"):
        from kiln.as_torch import run_script        # the script's options are all its own
        return run_script(argv[1], argv[2:])
    parser = argparse.ArgumentParser(prog="kiln", description="kiln command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="train a CNN on scikit-learn's 8x8 digits and print its held-out metrics")
    dump_p = sub.add_parser("dump", help="run a script and write, for each compiled function, "
                            "its traced graph (and later stages) as text, DOT, SVG and HTML")
    dump_p.add_argument("script")
    dump_p.add_argument("--out", default="kiln_dump", help="output folder (default kiln_dump)")
    dump_p.add_argument("--format", default="text,dot,svg,html",
                        help="comma-separated: text, dot, svg, html")
    dump_p.add_argument("--passes", action="store_true",
                        help="also print (and write) the graph each named pipeline step made: "
                        "partition, decompose, cleanup, fuse, split gathers, lower, plan memory")
    dump_p.add_argument("--real-torch", action="store_true",
                        help="leave the script's torch imports to the real torch (by default "
                        "they resolve to kiln, as in `kiln run`)")
    run_p = sub.add_parser("run", help="run an unmodified PyTorch script on kiln: its torch "
                           "(and torchvision) imports resolve to kiln's modules")
    run_p.add_argument("script")
    export_p = sub.add_parser("export", help="build a saved exported program (kiln.export) into "
                              "a C library (a folder) or an ONNX file")
    export_p.add_argument("--target", choices=("c", "onnx"), default="c")
    export_p.add_argument("program", help="a file ExportedProgram.save wrote")
    export_p.add_argument("out", help="output folder (c) or file (onnx)")
    export_p.add_argument("--size", action="append", default=[],
                          help="a dynamic size's value for the C library, e.g. batch=64")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        return _demo()
    if args.command == "run":
        from kiln.as_torch import run_script
        return run_script(args.script, rest)
    if args.command == "export":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _export(args.target, args.program, args.out, args.size)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    from kiln.dump import FORMATS
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        parser.error(f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    return _dump(args.script, rest, args.out, formats, args.passes, not args.real_torch)
