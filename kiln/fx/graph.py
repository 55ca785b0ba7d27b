"""`kiln.fx.Graph`: an ordered list of Nodes, their unique names, editing (insert points, erase,
copy, dead-code elimination, lint), printing, and the Python source a GraphModule runs."""

from __future__ import annotations

import builtins
import copy
import inspect
import keyword
import math
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from kiln.fx.node import Argument, Node, Target, map_arg, qualified_name, type_repr

_ILLEGAL_CHARS = re.compile(r"[^0-9a-zA-Z_]+")
_NAME = re.compile(r"^([a-zA-Z_][0-9a-zA-Z_]*?)(?:_(\d+))?$")
_SNAKE = re.compile(r"(?<=[a-z])([A-Z])")
_ILLEGAL_NAMES: dict = {k: object() for k in keyword.kwlist}
_ILLEGAL_NAMES.update(builtins.__dict__)          # a value's name never shadows a builtin

# operator.X printed as Python syntax in generated code and (reflected ones) on Proxy
REFLECTABLE_MAGIC = {
    "add": "{} + {}", "sub": "{} - {}", "mul": "{} * {}", "floordiv": "{} // {}",
    "truediv": "{} / {}", "div": "{} / {}", "mod": "{} % {}", "pow": "{} ** {}",
    "lshift": "{} << {}", "rshift": "{} >> {}", "and_": "{} & {}", "or_": "{} | {}",
    "xor": "{} ^ {}", "getitem": "{}[{}]", "matmul": "{} @ {}"}
MAGIC = {"eq": "{} == {}", "ne": "{} != {}", "lt": "{} < {}", "gt": "{} > {}", "le": "{} <= {}",
         "ge": "{} >= {}", "pos": "+{}", "neg": "-{}", "invert": "~{}", **REFLECTABLE_MAGIC}


def _custom_builtins() -> dict:
    """Names every generated forward can use without an import (torch.fx binds `torch`)."""
    import kiln
    return {"inf": math.inf, "nan": math.nan, "NoneType": type(None), "kiln": kiln,
            "device": kiln.device}


class _Namespace:
    """Unique Python names for objects: each object one name, each name one object, and no
    name shadows a builtin or keyword (torch.fx's naming: `sum` becomes `sum_1`)."""

    def __init__(self) -> None:
        self._obj_to_name: dict = {}
        self._used: set = set()
        self._base_count: dict = {}

    def create_name(self, candidate: str, obj: Any) -> str:
        if obj is not None and obj in self._obj_to_name:
            return self._obj_to_name[obj]
        match = _NAME.match(candidate)
        if match is None:
            candidate = _ILLEGAL_CHARS.sub("_", candidate) or "_unnamed"
            if candidate[0].isdigit():
                candidate = f"_{candidate}"
            match = _NAME.match(candidate)
        base, num = match.group(1, 2)
        if num is None or candidate in self._used:
            num = self._base_count.get(base, 0)
            if _ILLEGAL_NAMES.get(candidate, obj) is not obj:
                num += 1
                candidate = f"{base}_{num}"
        else:
            num = int(num)
        while candidate in self._used:
            num += 1
            candidate = f"{base}_{num}"
        self._used.add(candidate)
        self._base_count[base] = num
        if obj is not None:
            self._obj_to_name[obj] = candidate
        return candidate

    def copy(self) -> "_Namespace":
        other = _Namespace()
        other._obj_to_name = dict(self._obj_to_name)
        other._used = set(self._used)
        other._base_count = dict(self._base_count)
        return other


@dataclass
class PythonCode:
    """A graph's forward as Python source, and the globals it runs with."""
    src: str
    globals: dict


def _format_target(base: str, target: str) -> str:
    out = base
    for part in target.split("."):
        out = f'{out}.{part}' if part.isidentifier() else f'getattr({out}, "{part}")'
    return out


def _target_to_str(target: Target) -> str:
    op = target.__name__ if callable(target) else target
    if not callable(target) and op.startswith("__") and op.endswith("__"):
        op = op[2:-2]
    return _SNAKE.sub(r"_\1", op).lower()


class _NodeList:
    def __init__(self, graph: "Graph", reverse: bool = False) -> None:
        self._graph, self._reverse = graph, reverse

    def __iter__(self) -> Iterator[Node]:
        root = self._graph._root
        cur = root._prev if self._reverse else root._next
        while cur is not root:
            if not cur._erased:
                yield cur
            cur = cur._prev if self._reverse else cur._next

    def __len__(self) -> int:
        return self._graph._len

    def __reversed__(self) -> "_NodeList":
        return _NodeList(self._graph, not self._reverse)


class _InsertPoint:
    """`with graph.inserting_before(n):` - new nodes go there; the old point comes back after."""

    def __init__(self, graph: "Graph", insert: Callable[[Node], None]) -> None:
        self.graph, self.previous = graph, graph._insert
        graph._insert = insert

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        self.graph._insert = self.previous


class Graph:
    """torch.fx.Graph for kiln: nodes in program order, each with a unique name; a
    GraphModule turns it into a `forward`."""

    def __init__(self, owning_module=None, tracer_cls=None, tracer_extras=None) -> None:
        root = object.__new__(Node)
        root.graph, root.name, root.op, root.target, root._erased = self, "_root", "root", "", False
        root._prev = root._next = root
        self._root = root
        self._len = 0
        self._insert: Callable[[Node], None] = root.prepend
        self._graph_namespace = _Namespace()
        self.owning_module = owning_module
        self._tracer_cls = tracer_cls
        self._tracer_extras = tracer_extras
        self._codegen_hook = None

    @property
    def nodes(self) -> _NodeList:
        return _NodeList(self)

    def find_nodes(self, *, op: str, target: Target = None) -> list:
        return [n for n in self.nodes if n.op == op and (target is None or n.target == target)]

    # ------------------------------------------------------------------ building
    def create_node(self, op: str, target: Target, args: tuple | None = None,
                    kwargs: dict | None = None, name: str | None = None,
                    type_expr: Any = None) -> Node:
        """A new Node at the current insert point (the end, unless `inserting_before/after`)."""
        args = () if not args else args
        if not isinstance(args, tuple):
            raise TypeError(f"Graph.create_node: args must be a tuple, got {type(args).__name__}")
        kwargs = {} if not kwargs else kwargs
        if not isinstance(kwargs, dict):
            raise TypeError(f"Graph.create_node: kwargs must be a dict, got "
                            f"{type(kwargs).__name__}")
        candidate = name if name is not None else _target_to_str(target)
        unique = self._graph_namespace.create_name(candidate, None)
        node = Node(self, unique, op, target, args, kwargs, type_expr)
        self._insert(node)
        self._len += 1
        return node

    def placeholder(self, name: str, type_expr: Any = None,
                    default_value: Any = inspect.Signature.empty) -> Node:
        args = () if default_value is inspect.Signature.empty else (default_value,)
        return self.create_node("placeholder", name, args=args, type_expr=type_expr)

    def get_attr(self, qualified_name: str, type_expr: Any = None) -> Node:
        return self.create_node("get_attr", qualified_name, type_expr=type_expr)

    def call_module(self, module_name: str, args: tuple | None = None,
                    kwargs: dict | None = None, type_expr: Any = None) -> Node:
        return self.create_node("call_module", module_name, args, kwargs, type_expr=type_expr)

    def call_method(self, method_name: str, args: tuple | None = None,
                    kwargs: dict | None = None, type_expr: Any = None) -> Node:
        return self.create_node("call_method", method_name, args, kwargs, type_expr=type_expr)

    def call_function(self, the_function: Callable, args: tuple | None = None,
                      kwargs: dict | None = None, type_expr: Any = None) -> Node:
        return self.create_node("call_function", the_function, args, kwargs,
                                type_expr=type_expr)

    def output(self, result: Argument, type_expr: Any = None) -> Node:
        return self.create_node("output", "output", (result,), type_expr=type_expr)

    def inserting_before(self, n: Node | None = None) -> _InsertPoint:
        if n is None:
            return self.inserting_after(self._root)
        return _InsertPoint(self, n.prepend)

    def inserting_after(self, n: Node | None = None) -> _InsertPoint:
        if n is None:
            return self.inserting_before(self._root)
        return _InsertPoint(self, n.append)

    def erase_node(self, to_erase: Node) -> None:
        """Remove a node nothing reads any more (replace its uses first)."""
        if to_erase.users:
            raise RuntimeError(f"Tried to erase Node {to_erase} but it still had "
                               f"{len(to_erase.users)} users in the graph: {to_erase.users}!")
        if to_erase.graph is not self:
            raise RuntimeError(f"Attempting to remove {to_erase} from the wrong graph!")
        if to_erase._erased:
            return
        to_erase._remove_from_list()
        to_erase._erased = True
        self._len -= 1
        to_erase.args, to_erase.kwargs = (), {}       # its inputs lose it as a user

    def node_copy(self, node: Node, arg_transform: Callable[[Node], Argument] = lambda x: x
                  ) -> Node:
        """A copy of `node` (from any graph) here, its input nodes mapped by `arg_transform`."""
        args = map_arg(node.args, arg_transform)
        kwargs = map_arg(node.kwargs, arg_transform)
        result = self.create_node(node.op, node.target, args, kwargs, node.name, node.type)
        result.meta = copy.copy(node.meta)
        return result

    def graph_copy(self, g: "Graph", val_map: dict, return_output_node: bool = False):
        """Copy every node of `g` into this graph (`val_map`: g's node -> this graph's, filled
        in); returns what g's output returns, mapped, without copying the output node."""
        for node in g.nodes:
            if node in val_map:
                continue
            if node.op == "output":
                rv = map_arg(node.args[0], lambda n: val_map[n])
                return (rv, node) if return_output_node else rv
            val_map[node] = self.node_copy(node, lambda n: val_map[n])
        return None

    def __deepcopy__(self, memo: dict) -> "Graph":
        g = Graph(tracer_cls=self._tracer_cls)
        out = g.graph_copy(self, {}, return_output_node=True)
        if out is not None:
            rv, node = out
            g.output(rv, type_expr=node.type)
        return g

    def eliminate_dead_code(self, is_impure_node: Callable[[Node], bool] | None = None) -> bool:
        """Erase nodes whose value nothing reads and that have no effect; returns whether any
        were erased."""
        changed = False
        for node in reversed(self.nodes):
            impure = is_impure_node(node) if is_impure_node is not None else node.is_impure()
            if not impure and not node.users:
                self.erase_node(node)
                changed = True
        return changed

    def lint(self) -> None:
        """Check the graph's invariants: ops and targets valid, names unique, every input
        defined before its use and in this graph, users consistent, get_attr/call_module
        targets present in the owning module."""
        seen: set = set()
        names: set = set()
        for node in self.nodes:
            if node.graph is not self:
                raise RuntimeError(f"Node {node} does not belong to this Graph!")
            if node.name in names:
                raise RuntimeError(f"Node redefined name {node.name}!")
            names.add(node.name)
            for arg in node._input_nodes:
                if arg.graph is not self:
                    raise RuntimeError(f"Argument '{arg}' of Node '{node}' does not belong to "
                                       f"this Graph, but was used as an argument!")
                if arg not in seen:
                    raise RuntimeError(f"Argument '{arg}' of Node '{node}' was used before it "
                                       f"has been defined! Please check that Nodes in the "
                                       f"graph are topologically ordered")
                if node not in arg.users:
                    raise RuntimeError(f"Node {arg} does not list {node} among its users")
            seen.add(node)
            if self.owning_module is not None and node.op in ("get_attr", "call_module"):
                obj = self.owning_module
                for i, part in enumerate(node.target.split(".")):
                    if not hasattr(obj, part):
                        where = ".".join(node.target.split(".")[:i])
                        raise RuntimeError(f"Node {node} target {node.target} references "
                                           f"nonexistent attribute {part} of {where or 'root'}")
                    obj = getattr(obj, part)

    # ------------------------------------------------------------------ printing
    def __str__(self) -> str:
        # torch prints placeholders as lines and an empty parameter list: so does kiln
        return "graph():" + "".join("\n    " + n.format_node() for n in self.nodes)

    def print_tabular(self) -> None:
        """The graph as a table (opcode, name, target, args, kwargs); needs `tabulate`."""
        try:
            from tabulate import tabulate
        except ImportError:
            print("`print_tabular` relies on the library `tabulate`, which could not be found "
                  "on this machine. Run `pip install tabulate` to install the library.")
            raise
        rows = [[n.op, n.name, n.target, n.args, n.kwargs] for n in self.nodes]
        print(tabulate(rows, headers=["opcode", "name", "target", "args", "kwargs"]))

    def python_code(self, root_module: str, *, verbose: bool = False) -> PythonCode:
        """The source of `def forward(self, ...)` for this graph, and the globals it needs:
        one line per node, each value dropped (`x = None`) after its last use, as torch.fx
        writes it. `verbose` annotates each value with its dtype and shape where a pass
        (ShapeProp) recorded them (`conv1: "f32[2, 4, 6, 6]" = ...`)."""
        return _python_code(self, root_module, verbose)



_DTYPE_ABBREVIATIONS = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16",
                        "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
                        "uint8": "u8", "bool": "b8", "complex64": "c64", "complex128": "c128"}


def _meta_annotation(node: Node) -> str:
    """`: "f32[2, 4]"` from the value's recorded metadata (verbose listings), else ''."""
    meta = node.meta.get("val", node.meta.get("tensor_meta"))
    shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
    if shape is None or dtype is None or isinstance(meta, (tuple, list, dict)) and \
            not hasattr(meta, "_fields"):
        return ""
    name = str(dtype).split(".")[-1]
    return f': "{_DTYPE_ABBREVIATIONS.get(name, name)}[{", ".join(str(d) for d in shape)}]"'


def _python_code(graph: Graph, root_module: str, verbose: bool = False) -> PythonCode:
    namespace = graph._graph_namespace.copy()
    globals_: dict = {}
    wrapped: dict = {}

    def add_global(hint: str, obj: Any) -> str:
        if (getattr(obj, "__module__", None) or "").startswith("kiln"):
            dotted = qualified_name(obj)
            if dotted.startswith("kiln.") and _resolves(dotted, obj):
                return dotted                             # `kiln` is always bound
        name = namespace.create_name(hint, obj)
        if name in globals_ and globals_[name] is not obj:
            raise RuntimeError(f"generated code: global {name} bound to two objects")
        globals_[name] = obj
        return name

    for name, obj in _custom_builtins().items():      # bound in every generated forward
        globals_[namespace.create_name(name, obj)] = obj
    device = globals_["device"]

    def rep(arg: Argument) -> str:
        if isinstance(arg, Node):
            return arg.name
        if isinstance(arg, tuple) and hasattr(arg, "_fields"):
            cls = add_global(qualified_name(type(arg)), type(arg))
            return f"{cls}{tuple(arg)!r}"
        if isinstance(arg, tuple):
            return f"({rep(arg[0])},)" if len(arg) == 1 else \
                "(" + ", ".join(rep(a) for a in arg) + ")"
        if isinstance(arg, list):
            return "[" + ", ".join(rep(a) for a in arg) + "]"
        if isinstance(arg, slice):
            return f"slice({rep(arg.start)}, {rep(arg.stop)}, {rep(arg.step)})"
        if isinstance(arg, dict):
            return "{" + ", ".join(f"{k!r}: {rep(v)}" for k, v in arg.items()) + "}"
        if callable(arg) and hasattr(arg, "__name__") and not isinstance(arg, type):
            return add_global(qualified_name(arg), arg)
        if isinstance(arg, device):
            return f"device({str(arg)!r})"        # (kiln.device takes no `type=` keyword)
        return repr(arg)

    def annotation(node: Node) -> str:
        if verbose and _meta_annotation(node):
            return _meta_annotation(node)
        if node.type is None:
            return ""
        t = node.type
        if isinstance(t, type) and not isinstance(t, types.GenericAlias):
            return " : " + add_global(type_repr(t), t)
        return f" : {type_repr(t)}"

    def fmt_args(args: tuple, kwargs: dict) -> str:
        return ", ".join([rep(a) for a in args] + [f"{k} = {rep(v)}" for k, v in kwargs.items()])

    nodes = list(graph.nodes)
    last_use: dict = {}
    to_free: dict = {}
    for node in reversed(nodes):
        for inp in node._input_nodes:
            if inp not in last_use:
                last_use[inp] = node
                to_free.setdefault(node, []).append(inp)

    free_vars: list = []
    body: list = []
    returns = ""
    said_no_stack_trace = False
    for node in nodes:
        if node.op == "placeholder":
            default = f" = {rep(node.args[0])}" if node.args else ""
            free_vars.append(f"{node.target}{annotation(node)}{default}")
            raw = node.target.replace("*", "")
            if raw != node.name:
                body.append(f"{node.name} = {raw}\n")
            continue
        if node.op == "output":
            if node.type is not None:
                returns = " -> " + annotation(node)[3:]
            body.append(f"return {rep(node.args[0])}\n")
            continue
        if verbose and not said_no_stack_trace:
            # torch's verbose listing heads each group of nodes with where it came from;
            # kiln records no stack traces, so one line says so, as torch's does then
            body.append("\n# No stacktrace found for following nodes\n")
            said_no_stack_trace = True
        target = f"{node.name}{annotation(node)}"
        if node.op == "call_method":
            line = (f"{target} = {_format_target(rep(node.args[0]), node.target)}"
                    f"({fmt_args(node.args[1:], node.kwargs)})")
        elif node.op == "call_function":
            name = getattr(node.target, "__name__", "")
            if getattr(node.target, "__module__", "") == "_operator" and name in MAGIC:
                line = f"{target} = " + MAGIC[name].format(*(rep(a) for a in node.args))
            else:
                global_name = add_global(qualified_name(node.target), node.target)
                if global_name == "getattr" and len(node.args) == 2 and \
                        isinstance(node.args[1], str) and node.args[1].isidentifier():
                    line = f"{target} = {_format_target(rep(node.args[0]), node.args[1])}"
                else:
                    line = f"{target} = {global_name}({fmt_args(node.args, node.kwargs)})"
                if node.meta.get("is_wrapped"):
                    wrapped.setdefault(global_name)
        elif node.op == "call_module":
            line = (f"{target} = {_format_target(root_module, node.target)}"
                    f"({fmt_args(node.args, node.kwargs)})")
        else:                                              # get_attr
            line = f"{target} = {_format_target(root_module, node.target)}"
        dead = list(to_free.get(node, []))
        if not node.users:
            dead.append(node)
        if dead:
            line += ";  " + " = ".join([n.name for n in dead] + ["None"])
        body.append(line + "\n")
    if not body:
        body.append("pass\n")
    wrap_stmts = ""
    if wrapped:
        from kiln.fx._symbolic_trace import wrap
        wrap_name = add_global("wrap", wrap)
        wrap_stmts = "\n".join(f'{wrap_name}("{name}")' for name in wrapped)
    code = "".join(body).lstrip("\n")
    code = "\n".join("    " + line for line in code.split("\n"))
    args = ", ".join([root_module] + free_vars)
    src = f"\n{wrap_stmts}\n\ndef forward({args}){returns}:\n{code}"
    return PythonCode(src, globals_)


def _resolves(dotted: str, obj: Any) -> bool:
    import importlib
    head, _, rest = dotted.partition(".")
    try:
        value = importlib.import_module(head)
    except ImportError:
        return False
    for part in rest.split("."):
        value = getattr(value, part, None)
        if value is None:
            return False
    return getattr(value, "__fx_original__", value) is obj
