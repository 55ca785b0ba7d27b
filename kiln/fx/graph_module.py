"""`kiln.fx.GraphModule`: a kiln.nn.Module whose forward is Python generated from a Graph; it
holds the submodules, parameters and buffers the graph refers to, so it trains, saves and
compiles like any module."""

from __future__ import annotations

import copy
import itertools
import linecache
import os
from pathlib import Path
from typing import Any

import kiln
from kiln.fx.graph import Graph, _custom_builtins

_SOURCE_IDS = itertools.count()


def _copy_attr(from_module: kiln.nn.Module, to_module: kiln.nn.Module, target: str) -> None:
    """Make `to_module.<target>` the object `from_module.<target>` is (not a copy), creating
    empty modules along the dotted path as needed."""
    *prefix, field = target.split(".")
    for item in prefix:
        f = getattr(from_module, item)
        t = getattr(to_module, item, None)
        if f is t:                 # already installed whole
            return
        if t is None:
            t = kiln.nn.Module()
            setattr(to_module, item, t)
        from_module, to_module = f, t
    orig = getattr(from_module, field)
    if isinstance(orig, kiln.Tensor) and not isinstance(orig, kiln.nn.Parameter):
        to_module.register_buffer(field, orig)
    else:
        setattr(to_module, field, orig)


def _assign_attr(obj: Any, to_module: kiln.nn.Module, target: str) -> None:
    *prefix, field = target.split(".")
    for item in prefix:
        t = getattr(to_module, item, None)
        if t is None:
            t = kiln.nn.Module()
            setattr(to_module, item, t)
        to_module = t
    if isinstance(obj, kiln.Tensor) and not isinstance(obj, kiln.nn.Parameter):
        to_module.register_buffer(field, obj)
    else:
        setattr(to_module, field, obj)


def _construction_lines(target: str, module: kiln.nn.Module, lines: list,
                        root: bool = False) -> None:
    """Python lines that rebuild `module`'s structure at `target` (values come from the
    state_dict afterwards): a childless kiln.nn layer from its repr, any other module as an
    empty Module holding its children, parameters and buffers."""
    children = list(module.named_children())
    layer = type(module).__module__.startswith("kiln.nn") and type(module) is not kiln.nn.Module
    if not root and layer and not children:
        text = repr(module)
        if "\n" not in text:
            lines.append(f"{target} = {text}")
            return
    if not root and (layer or isinstance(module, GraphModule) or
                     type(module).forward is not kiln.nn.Module.forward):
        raise NotImplementedError(f"GraphModule.to_folder: cannot write {target[5:]} "
                                  f"({type(module).__name__}) as source; kiln pickles no "
                                  f"modules")
    if not root:
        lines.append(f"{target} = kiln.nn.Module()")
    for name, p in module._parameters.items():
        if p is not None:
            lines.append(f"{target}.{name} = kiln.nn.Parameter(kiln.empty({tuple(p.shape)}, "
                         f"dtype={p.dtype!r}), requires_grad={p.requires_grad})")
    for name, b in module._buffers.items():
        if b is not None:
            lines.append(f"{target}.register_buffer({name!r}, kiln.empty({tuple(b.shape)}, "
                         f"dtype={b.dtype!r}))")
    for name, child in children:
        child_target = f"{target}.{name}" if name.isidentifier() else None
        if child_target is None:
            holder = f"_{len(lines)}"
            _construction_lines(holder, child, lines)
            lines.append(f"{target}.add_module({name!r}, {holder})")
        else:
            _construction_lines(child_target, child, lines)


def _import_block(globals_: dict) -> str:
    """Import lines that bind a generated forward's globals again in another process."""
    lines = []
    builtins_ = _custom_builtins()
    for name, obj in globals_.items():
        if name in builtins_ and builtins_[name] is obj:
            continue
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", "")
        if module is None or "." in qualname or "<" in qualname:
            raise TypeError(f"kiln.fx.GraphModule: cannot pickle a graph that calls {obj!r} "
                            f"(not importable by name); use a module-level function")
        lines.append(f"from {module} import {qualname} as {name}")
    return "\n".join(lines) + "\n" if lines else ""


def _rebuild_graph_module(state: dict, src: str, class_name: str) -> "GraphModule":
    """A pickled GraphModule: its attributes, and its graph traced again from the source."""
    from kiln.fx._symbolic_trace import Tracer
    globals_ = dict(_custom_builtins())
    exec(compile(src, f"<kiln.fx unpickled forward {next(_SOURCE_IDS)}>", "exec",
                 dont_inherit=True), globals_)
    cls = type(class_name, (kiln.nn.Module,), {"forward": globals_["forward"]})
    root = cls.__new__(cls)
    root.__dict__.update(state)

    class KeepModules(Tracer):
        def is_leaf_module(self, m: kiln.nn.Module, qualname: str) -> bool:
            return True
    return GraphModule(root, KeepModules().trace(root), class_name)


class GraphModule(kiln.nn.Module):
    """A module made from `root` (a Module, or a dict of name -> object) and `graph`: the
    graph's get_attr and call_module targets are copied from root, and `forward` is the
    graph's generated source (`.code`), regenerated by `recompile()` after editing."""

    def __new__(cls, *args, **kwargs):
        # each instance gets its own class, so its generated forward is a class attribute
        # (as for any module) without changing other GraphModules
        if cls.__name__ == "GraphModule" or not getattr(cls, "_is_instance_class", False):
            cls = type("GraphModuleImpl", (cls,), {"_is_instance_class": True})
        return super().__new__(cls)

    def __init__(self, root: kiln.nn.Module | dict, graph: Graph,
                 class_name: str = "GraphModule") -> None:
        super().__init__()
        type(self).__name__ = class_name
        type(self).__qualname__ = class_name
        if isinstance(root, kiln.nn.Module):
            if hasattr(root, "training"):
                self.training = root.training
            for node in graph.nodes:
                if node.op in ("get_attr", "call_module"):
                    _copy_attr(root, self, node.target)
        elif isinstance(root, dict):
            for node in graph.nodes:
                if node.op in ("get_attr", "call_module"):
                    if node.target not in root:
                        raise RuntimeError(f"Node {node} referenced target {node.target} but "
                                           f"that target was not provided in `root`")
                    _assign_attr(root[node.target], self, node.target)
        else:
            raise TypeError(f"kiln.fx.GraphModule: root must be a kiln.nn.Module or a dict, "
                            f"got {type(root).__name__}")
        object.__setattr__(self, "_graph", graph)
        graph.owning_module = self
        self.recompile()

    @property
    def graph(self) -> Graph:
        return self._graph

    @graph.setter
    def graph(self, g: Graph) -> None:
        object.__setattr__(self, "_graph", g)
        g.owning_module = self
        self.recompile()

    @property
    def code(self) -> str:
        """The generated source of forward."""
        return self._code

    def recompile(self):
        """Regenerate forward from the graph (call after editing `self.graph`)."""
        python_code = self._graph.python_code(root_module="self")
        object.__setattr__(self, "_code", python_code.src)
        # a file name of its own in linecache: tracebacks and inspect show the generated lines
        filename = f"<kiln.fx generated forward {next(_SOURCE_IDS)}>"
        linecache.cache[filename] = (len(python_code.src), None,
                                     python_code.src.splitlines(True), filename)
        globals_ = dict(python_code.globals)
        exec(compile(python_code.src, filename, "exec", dont_inherit=True), globals_)
        type(self).forward = globals_["forward"]
        return python_code

    def print_readable(self, print_output: bool = True) -> str:
        """The module as a class with its generated forward, each value annotated with the
        dtype and shape a pass recorded (and its GraphModule children likewise)."""
        code = self._graph.python_code(root_module="self", verbose=True).src
        body = code.lstrip("\n").rstrip().split("\n")
        lines = [f"class {type(self).__name__}(kiln.nn.Module):"]
        lines += ["    " + line if line.strip() else "" for line in body]
        text = "\n".join(lines) + "\n"
        for name, child in self.named_children():
            if isinstance(child, GraphModule):
                text += "\n" + "\n".join("    " + line for line in
                                         child.print_readable(False).split("\n"))
        if print_output:
            print(text)
        return text

    def to_folder(self, folder: str | os.PathLike, module_name: str = "FxModule") -> None:
        """Write `folder/module.py` (a class `module_name` with the generated forward, whose
        __init__ rebuilds the submodules) and `folder/state_dict.pt`, so that
        `from folder.module import FxModule` gives this module without its source. A kiln.nn
        layer is rebuilt from its repr; a module that cannot be (a layer with children, a
        GraphModule) raises NotImplementedError, as kiln pickles no modules."""
        folder = Path(folder)
        folder.mkdir(exist_ok=True)
        lines: list = []
        _construction_lines("self", self, lines, root=True)
        init = "\n".join("        " + line for line in lines)
        body = "\n".join("    " + line for line in self._code.strip("\n").split("\n"))
        src = ("import operator\nfrom pathlib import Path\n\nimport kiln\n"
               "from kiln.nn import *  # noqa: F401,F403  (the layers' reprs name them)\n\n\n"
               f"class {module_name}(kiln.nn.Module):\n    def __init__(self):\n"
               f"        super().__init__()\n{init}\n"
               "        self.load_state_dict(kiln.load(Path(__file__).parent / "
               "'state_dict.pt'))\n\n" + body.rstrip() + "\n")
        kiln.save(self.state_dict(), folder / "state_dict.pt")
        (folder / "module.py").write_text(src)
        (folder / "__init__.py").write_text("from .module import *  # noqa: F401,F403\n")

    # ------------------------------------------------------------------ submodules
    def add_submodule(self, target: str, m: kiln.nn.Module) -> bool:
        """Install `m` at dotted path `target`, creating empty parent modules as needed;
        False when a step of the path is something other than a module."""
        *prefix, field = target.split(".")
        mod = self
        for item in prefix:
            submod = getattr(mod, item, None)
            if submod is None:
                submod = kiln.nn.Module()
                setattr(mod, item, submod)
            if not isinstance(submod, kiln.nn.Module):
                return False
            mod = submod
        mod.add_module(field, m)
        return True

    def delete_submodule(self, target: str) -> bool:
        """Remove the submodule at dotted path `target`; False when there is none."""
        *path, name = target.split(".")
        mod = self
        for item in path:
            mod = getattr(mod, item, None)
            if not isinstance(mod, kiln.nn.Module):
                return False
        if not isinstance(getattr(mod, name, None), kiln.nn.Module):
            return False
        delattr(mod, name)
        return True

    def delete_all_unused_submodules(self) -> None:
        """Remove every submodule no call_module or get_attr node (or its children) uses."""
        used: set = set()
        for node in self._graph.nodes:
            if node.op in ("call_module", "get_attr"):
                parts = node.target.split(".")
                used.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
                if node.op == "call_module":
                    module = self.get_submodule(node.target)
                    used.update(f"{node.target}.{name}" for name, _ in module.named_modules()
                                if name)
        for name, _ in list(self.named_modules()):
            if name and name not in used:
                self.delete_submodule(name)

    def __deepcopy__(self, memo: dict) -> "GraphModule":
        # the attributes (modules, parameters, buffers) copied as any module's are, the graph
        # copied node by node, and the forward generated anew for the copy
        fake = kiln.nn.Module()
        kiln.compiler.note_flag_read(self)      # (the flag is copied from `__dict__`)
        state = {k: v for k, v in self.__dict__.items() if k not in ("_graph", "_code")}
        fake.__dict__.update(copy.deepcopy(state, memo))
        graph = copy.deepcopy(self._graph, memo)
        result = GraphModule(fake, graph, type(self).__name__)
        memo[id(self)] = result
        return result

    def __copy__(self) -> "GraphModule":
        return GraphModule(self, self._graph, type(self).__name__)

    def __str__(self) -> str:
        return super().__str__() + "\n\n\n" + self._code

    def __reduce__(self):
        # as torch.fx: the attributes, and the forward's source with imports for its globals;
        # unpickling runs that source and traces it again (every submodule kept whole)
        kiln.compiler.note_flag_read(self)
        state = {k: v for k, v in self.__dict__.items() if k not in ("_graph", "_code")}
        python_code = self._graph.python_code(root_module="self")
        return (_rebuild_graph_module, (state, _import_block(python_code.globals) +
                                        python_code.src, type(self).__name__))
