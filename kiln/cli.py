"""The `kiln` command line: `kiln demo` and `kiln dump script.py` (also `python -m kiln ...`)."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


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


def _dump(script: str, script_args: list, out: str, formats: tuple) -> int:
    """Run a script; write a report for every `@kiln.compile` function it called."""
    from kiln import compiler, dump
    captured: dict = {}
    compiled_of: dict = {}

    def sink(compiled, programs):
        name = getattr(compiled.fn, "__qualname__", compiler._function_name(compiled.fn))
        captured.setdefault(name, []).extend(programs)
        compiled_of[name] = compiled
        entry_breaks = [e.eager_reason for e in compiled.entries.values() if e.eager_reason]
        captured.setdefault("__breaks__" + name, []).extend(entry_breaks)

    compiler._DUMP_SINKS.append(sink)
    sys.argv = [script] + list(script_args)
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        compiler._DUMP_SINKS.remove(sink)
    written = []
    for name, programs in captured.items():
        if name.startswith("__breaks__"):
            continue
        written += dump.write_programs(out, name, programs, formats,
                                       notes=dump.compiled_notes(compiled_of[name]))
        for reason in dict.fromkeys(captured.get("__breaks__" + name, [])):
            print(f"kiln dump: {name} runs eagerly: {reason}")
    if not captured:
        print("kiln dump: the script called no @kiln.compile function; nothing to write")
        return 1
    for path in written:
        print(f"kiln dump: wrote {path}")
    if not any(p.suffix == ".svg" for p in written) and "svg" in formats:
        print("kiln dump: " + dump.NO_GRAPHVIZ)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln", description="kiln command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="train a CNN on scikit-learn's 8x8 digits and print its held-out metrics")
    dump_p = sub.add_parser("dump", help="run a script and write, for each compiled function, "
                            "its traced graph (and later stages) as text, DOT, SVG and HTML")
    dump_p.add_argument("script")
    dump_p.add_argument("--out", default="kiln_dump", help="output folder (default kiln_dump)")
    dump_p.add_argument("--format", default="text,dot,svg,html",
                        help="comma-separated: text, dot, svg, html")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        return _demo()
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    from kiln.dump import FORMATS
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        parser.error(f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    return _dump(args.script, rest, args.out, formats)
