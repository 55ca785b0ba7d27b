"""`python -m kiln run script.py [args]`: run an unmodified PyTorch script on kiln.

For the run, an import finder resolves `torch` and every `torch.X.Y` to kiln's module of the same
path (`torch.nn.functional` is `kiln.nn.functional`, `torch.utils.data` is `kiln.utils.data`),
and `torchvision...` to `kiln.vision...`. The names are bound to kiln's own module objects, so
`torch.nn is kiln.nn` and nothing is copied. A torch module kiln has no counterpart for raises
ModuleNotFoundError at the script's import line, naming the module.

This is `import kiln as torch` done for the script: its own source stays PyTorch's.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import runpy
import sys
import types
from pathlib import Path

ALIASES = {"torch": "kiln", "torchvision": "kiln.vision", "functorch": "kiln.functorch"}


def _kiln_module(name: str):
    """kiln's module for dotted `name` (`kiln.nn.functional`): imported, or reached as an
    attribute where kiln binds a module object into a package under another name."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is None or not name.startswith(error.name):
            raise                       # a missing dependency inside kiln: not ours to rename
    parent, _, attr = name.rpartition(".")
    if parent:
        found = getattr(_kiln_module(parent), attr, None)
        if isinstance(found, types.ModuleType):
            return found
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `torch...` / `torchvision...` and loads them as kiln's modules."""

    def __init__(self):
        self._own_specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        top, dot, rest = fullname.partition(".")
        if top not in ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=ALIASES[top] + dot + rest)

    def create_module(self, spec):
        try:
            module = _kiln_module(spec.origin)
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                f"No module named {spec.name!r}: kiln (running this script as torch through "
                f"`kiln run`) has no {spec.origin!r}", name=spec.name) from None
        self._own_specs[spec.name] = getattr(module, "__spec__", None)
        return module

    def exec_module(self, module):
        # the import system stamped the alias's spec on kiln's module: give its own back
        for name, own in self._own_specs.items():
            if sys.modules.get(name) is module:
                module.__spec__ = own


def install() -> _AliasFinder:
    """Resolve `torch`/`torchvision` imports to kiln from now on, in this process."""
    clash = [name for name in ALIASES if name in sys.modules
             and not sys.modules[name].__name__.startswith("kiln")]
    if clash:
        raise RuntimeError(f"kiln run: {clash[0]} is already imported in this process; run the "
                           "script in a fresh one (`python -m kiln run script.py`)")
    finder = _AliasFinder()
    sys.meta_path.insert(0, finder)
    _in_spawned_children_too()
    return finder


def _in_spawned_children_too() -> None:
    """A process multiprocessing starts by "spawn" (mp.Process, DataLoader workers, a pool)
    runs a fresh interpreter that would import the real torch when it re-imports the script:
    its command line installs the alias first (a forked child inherits it anyway)."""
    import multiprocessing.spawn as mp_spawn
    original = mp_spawn.get_command_line
    if getattr(original, "kiln_as_torch", False):
        return

    def get_command_line(**kwds):
        command = original(**kwds)
        at = command.index("-c") + 1
        command[at] = "from kiln.as_torch import install; install(); " + command[at]
        return command

    get_command_line.kiln_as_torch = True
    mp_spawn.get_command_line = get_command_line


def run_script(script: str, args: list) -> int:
    """Run `script` as `__main__` with `args` as its argv, its torch imports resolved to kiln."""
    path = Path(script)
    if not path.is_file():
        print(f"kiln run: no such script: {script}", file=sys.stderr)
        return 2
    install()
    sys.argv = [script] + list(args)
    # as `python script.py` has it: the script's folder first (its sibling modules import),
    # in place of the working directory `python -m` put there
    folder = str(path.resolve().parent)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:          # argparse's --help, sys.exit(n) in the script
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
