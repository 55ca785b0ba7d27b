"""DESIGN.md's import rules, checked by reading kiln's imports with `ast` (nothing is imported).

The rules (ARCHITECTURE.md, "Import rules"): the module-level import graph of `kiln/` has no
cycles; `ir` imports nothing of kiln; `passes` and `codegen` import `ir` (and themselves);
`runtime` imports `ir` and `codegen`; `tracer` imports `ir` and `runtime`; `nn`, `optim`,
`utils`, `distributions` and `metrics` import only public names: the package root, the public
subpackages, and `kiln.compiler`'s hooks. The layer rules count every import, at module level
or inside a function; the cycle rule counts module-level imports, since only those run while
a module is being initialised.

An import edge goes to the module named: `from kiln.a import b` names `kiln.a.b` when that is
a module, else `kiln.a`. Importing `kiln.a.b` also runs `kiln/__init__.py`, but that parent
edge is not counted: every module would then depend on the root.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

KILN = Path(__file__).resolve().parents[1] / "kiln"

# Layers with a DESIGN.md rule: the layers each may import (itself always allowed).
LOWER_LAYERS = {
    "ir": set(),
    "passes": {"ir"},
    "codegen": {"ir"},
    "runtime": {"ir", "codegen"},
    "tracer": {"ir", "runtime"},
}
# Layers written against the public API only.
PUBLIC_ONLY = {"nn", "optim", "utils", "distributions", "metrics"}
# What they may import: the root and these packages (their public names: no `_name`s across
# packages). `kiln.compiler` only for its hooks, never its submodules.
# `kiln.ops` is the one door to the tracer's vocabulary (primitives, core composites) that
# nn.functional builds on, as torch.nn.functional uses torch.ops.
PUBLIC_PACKAGES = {"kiln", "nn", "optim", "utils", "autograd", "distributed", "distributions",
                   "linalg", "special", "fft", "amp", "metrics", "serialization", "compiler",
                   "ops", "func", "backends", "__future__", "hub", "overrides"}
COMPILER_HOOKS = {"compile", "composite", "is_compiling", "untraced", "note_grad_cleared",
                  "scalar_input", "as_number", "replay_after", "note_python_read",
                  "note_item_read", "note_item_write",
                  "note_grads_checked",
                  "note_flag_read", "note_state_read", "active_traces", "reset"}

# Imports allowed despite the rules: (importer, imported module) -> why. Keep it short; every
# entry is a debt with its reason.
ALLOWED: dict[tuple[str, str], str] = {
}


@dataclass(frozen=True)
class Import:
    importer: str           # dotted module name of the importing file
    target: str             # dotted module name imported
    names: tuple            # the names taken from it (`from m import a, b`), else ()
    line: int
    in_function: bool       # inside a def/lambda (runs on call, not at import)

    def __str__(self) -> str:
        where = "function-level" if self.in_function else "module-level"
        names = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.importer}:{self.line} imports {self.target}{names} [{where}]"


def module_names(root: Path = KILN) -> dict[str, Path]:
    """Every module of the package under `root`, by dotted name (`kiln.tracer.dispatch`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, source: str, is_package: bool, modules) -> list[Import]:
    """The kiln imports in one module's source, relative ones resolved."""
    out = []

    def visit(statements, in_function):
        # statements hold imports, and only statements' bodies hold statements: expressions
        # (most of the tree) are not walked
        for child in statements:
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "kiln" or alias.name.startswith("kiln."):
                        out.append(Import(name, alias.name, (), child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                if module == "kiln" or module.startswith("kiln."):
                    plain = []
                    for alias in child.names:
                        if f"{module}.{alias.name}" in modules:
                            out.append(Import(name, f"{module}.{alias.name}", (), child.lineno,
                                              in_function))
                        else:
                            plain.append(alias.name)
                    if plain:
                        out.append(Import(name, module, tuple(plain), child.lineno, in_function))
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                visit(getattr(child, field, ()), inner)

    visit(ast.parse(source).body, False)
    return out


def read_imports(modules: dict[str, Path]) -> list[Import]:
    found = []
    for name, path in modules.items():
        found += imports_of(name, path.read_text(), path.name == "__init__.py", modules)
    return found


def cycles(imports: list[Import], modules) -> list[str]:
    """Each module-level import cycle, as a chain `a -> b -> a` (one per strongly connected
    set of modules), with the line of each import in it."""
    graph = nx.DiGraph()
    for imp in imports:
        if not imp.in_function and imp.target in modules and imp.target != imp.importer:
            graph.add_edge(imp.importer, imp.target, line=imp.line)
    chains = []
    for group in nx.strongly_connected_components(graph):
        if len(group) < 2:
            continue
        loop = nx.find_cycle(graph.subgraph(group))
        steps = [f"{a} (line {graph.edges[a, b]['line']})" for a, b in loop]
        more = f" [{len(group)} modules in this tangle]" if len(group) > len(loop) else ""
        chains.append(" -> ".join(steps + [loop[0][0]]) + more)
    return sorted(chains)


def layer_of(module: str) -> str:
    """`kiln.tracer.dispatch` -> "tracer"; `kiln.metrics` -> "metrics"; `kiln` -> "kiln"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kiln"


def violation(imp: Import) -> str | None:
    """Why `imp` breaks a layer rule, or None."""
    layer, target = layer_of(imp.importer), layer_of(imp.target)
    if layer == target:
        return None
    if layer in LOWER_LAYERS and target not in LOWER_LAYERS[layer]:
        allowed = ", ".join(sorted(LOWER_LAYERS[layer])) or "nothing of kiln"
        return f"{layer} may import only {allowed}"
    if layer in PUBLIC_ONLY:
        if target not in PUBLIC_PACKAGES:
            return f"{layer} uses only the public API; kiln.{target} is internal"
        if target == "compiler":
            if imp.target != "kiln.compiler" or not set(imp.names) <= COMPILER_HOOKS:
                return f"{layer} may take only kiln.compiler's hooks {sorted(COMPILER_HOOKS)}"
        private = [n for n in imp.names if n.startswith("_")]
        if private:
            return f"{layer} uses only public names; {', '.join(private)} is private"
    return None


def layer_violations(imports: list[Import], allowed=ALLOWED) -> list[str]:
    return sorted(f"{imp}: {why}" for imp in imports
                  if (why := violation(imp)) and (imp.importer, imp.target) not in allowed)


class _Read(tuple):
    """(modules, imports) of kiln; a short repr keeps failure reports readable."""

    def __repr__(self) -> str:
        return f"<{len(self[0])} kiln modules, {len(self[1])} imports>"


@pytest.fixture(scope="module")
def kiln_imports():
    modules = module_names()
    return _Read((modules, read_imports(modules)))


def test_no_module_level_cycles(kiln_imports):
    modules, imports = kiln_imports
    found = cycles(imports, modules)
    assert not found, "import cycles in kiln/:\n" + "\n".join(found)


def _violations_of(imports, importers) -> list[str]:
    return layer_violations([i for i in imports if layer_of(i.importer) in importers])


@pytest.mark.parametrize("layers", [("ir",), ("passes", "codegen"), ("tracer",),
                                    ("nn",), ("optim",), ("utils", "distributions", "metrics")])
def test_layer_rules(kiln_imports, layers):
    found = _violations_of(kiln_imports[1], layers)
    assert not found, "layer rule broken:\n" + "\n".join(found)


def test_runtime_imports_only_ir_and_codegen(kiln_imports):
    found = _violations_of(kiln_imports[1], ("runtime",))
    assert not found, "layer rule broken:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- the checker
# A rule test that reads nothing passes silently; these feed it planted violations.

def _synthetic(sources: dict[str, str]) -> tuple[dict, list[Import]]:
    modules = {name: Path(name.replace(".", "/") + ".py") for name in sources}
    imports = []
    for name, source in sources.items():
        imports += imports_of(name, source, name in ("kiln", "kiln.tracer", "kiln.nn"), modules)
    return modules, imports


def test_checker_reads_kiln(kiln_imports):
    modules, imports = kiln_imports
    assert {"kiln", "kiln.tracer.dispatch", "kiln.ir.ops", "kiln.nn.functional"} <= set(modules)
    assert len(imports) > 500
    # a known edge, absolute and module-level
    assert any(i.importer == "kiln.tracer.dispatch" and i.target == "kiln.ir.ops"
               and not i.in_function for i in imports)


def test_checker_finds_a_planted_cycle_and_resolves_relative_imports():
    modules, imports = _synthetic({
        "kiln": "",
        "kiln.tracer": "",
        "kiln.tracer.a": "from kiln.tracer import b\n",
        "kiln.tracer.b": "from . import c\n",
        "kiln.tracer.c": "from .a import f\n",
        "kiln.tracer.d": "def g():\n    from kiln.tracer import a\n",
    })
    assert cycles(imports, modules) == [
        "kiln.tracer.a (line 1) -> kiln.tracer.b (line 1) -> kiln.tracer.c (line 1) -> "
        "kiln.tracer.a"]
    # a function-level import is not part of a cycle, but is read
    (late,) = [i for i in imports if i.importer == "kiln.tracer.d"]
    assert late.in_function and late.target == "kiln.tracer.a"


def test_checker_finds_planted_layer_violations():
    modules, imports = _synthetic({
        "kiln": "",
        "kiln.ir.ops": "def f():\n    from kiln.tracer.tensor import Tensor\n",
        "kiln.nn": "",
        "kiln.nn.layer": ("import kiln\n"
                          "from kiln.compiler import untraced, _replay\n"
                          "from kiln import _torch_namespace\n"
                          "from ..tracer import trace\n"),
        "kiln.runtime.exec": "import kiln.passes.fusion\n",
        "kiln.tracer.tensor": "", "kiln.tracer.trace": "", "kiln.passes.fusion": "",
    })
    found = layer_violations(imports, allowed={})
    assert found == [
        "kiln.ir.ops:2 imports kiln.tracer.tensor (Tensor) [function-level]: "
        "ir may import only nothing of kiln",
        "kiln.nn.layer:2 imports kiln.compiler (untraced, _replay) [module-level]: nn may take "
        f"only kiln.compiler's hooks {sorted(COMPILER_HOOKS)}",
        "kiln.nn.layer:3 imports kiln (_torch_namespace) [module-level]: nn uses only public "
        "names; _torch_namespace is private",
        "kiln.nn.layer:4 imports kiln.tracer.trace [module-level]: nn uses only the public API; "
        "kiln.tracer is internal",
        "kiln.runtime.exec:1 imports kiln.passes.fusion [module-level]: runtime may import "
        "only codegen, ir",
    ]
    # an explicit exception silences exactly its edge
    assert len(layer_violations(imports, allowed={("kiln.nn.layer", "kiln.tracer.trace"): ""})) \
        == 4
