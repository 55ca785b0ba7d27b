"""`kiln.fx.Proxy`: the stand-in value symbolic tracing runs `forward` on. Every operation on a
Proxy (an operator, a method, a `kiln.*` / `kiln.nn.functional.*` call) appends a Node to the
tracer's Graph and returns a new Proxy.

kiln's functions know nothing of proxies (PyTorch's answer, `__torch_function__`, would add a
check to every eager call). Instead, while a tracer can record (during `Tracer.trace`, and
while a `GraphAppendingTracer` is alive) the public function namespaces hold a thin wrapper of
each function that records a `call_function` node when an argument is a Proxy and calls the
function otherwise; the Tensor operators step aside for a Proxy operand (`2 * t + proxy`).
Outside those windows kiln's namespaces are untouched, so eager code pays nothing.
"""

from __future__ import annotations

import dis
import functools
import inspect
import operator
import types
import weakref
from collections import OrderedDict
from typing import Any, Callable

from kiln.fx.graph import MAGIC, REFLECTABLE_MAGIC, Graph
from kiln.fx.node import Argument, Node, Target


class TraceError(ValueError):
    """A traced program did something symbolic tracing cannot record (control flow on a
    Proxy's value, iterating a Proxy of unknown length)."""


class TracerBase:
    """What Proxy needs of a tracer: a Graph, and how to turn values into Node arguments."""

    graph: Graph
    record_stack_traces: bool = False
    proxy_buffer_attributes: bool = False
    check_mutable_operations: bool = False
    trace_asserts: bool = False
    scope: Any = None

    def __init__(self) -> None:
        self.module_stack: OrderedDict = OrderedDict()

    def create_node(self, kind: str, target: Target, args: tuple, kwargs: dict,
                    name: str | None = None, type_expr: Any = None) -> Node:
        node = self.graph.create_node(kind, target, args, kwargs, name, type_expr)
        if self.module_stack and kind != "placeholder":
            node.meta["nn_module_stack"] = OrderedDict(self.module_stack)
        return node

    def proxy(self, node: Node) -> "Proxy":
        return Proxy(node, self)

    def create_proxy(self, kind: str, target: Target, args: tuple, kwargs: dict,
                     name: str | None = None, type_expr: Any = None,
                     proxy_factory_fn: Callable[[Node], "Proxy"] | None = None) -> "Proxy":
        """A Node for this call (its arguments converted by `create_arg`) and its Proxy."""
        args_ = self.create_arg(args)
        kwargs_ = self.create_arg(kwargs)
        node = self.create_node(kind, target, args_, kwargs_, name, type_expr)
        return self.proxy(node) if proxy_factory_fn is None else proxy_factory_fn(node)

    def create_arg(self, a: Any) -> Argument:
        """`a` as a Node argument: a Proxy becomes its Node; containers are converted
        element-wise; plain values stay (a type this cannot store raises)."""
        if isinstance(a, Proxy):
            return a.node
        if isinstance(a, Node):
            return a
        if isinstance(a, tuple):
            items = tuple(self.create_arg(e) for e in a)
            return type(a)(*items) if hasattr(a, "_fields") else items
        if isinstance(a, list):
            return [self.create_arg(e) for e in a]
        if isinstance(a, dict):
            out = {}
            for k, v in a.items():
                k = self.create_arg(k)
                if isinstance(k, Node):
                    raise RuntimeError("kiln.fx: keys of a dict argument cannot be traced values")
                out[k] = self.create_arg(v)
            return out
        if isinstance(a, slice):
            return slice(self.create_arg(a.start), self.create_arg(a.stop),
                         self.create_arg(a.step))
        if isinstance(a, range):
            return range(self.create_arg(a.start), self.create_arg(a.stop),
                         self.create_arg(a.step))
        if a is None or a is ... or isinstance(a, (str, int, float, bool, complex,
                                                   types.FunctionType,
                                                   types.BuiltinFunctionType)):
            return a
        if _is_plain_kiln_value(a):
            return a
        raise NotImplementedError(f"kiln.fx: argument of type {type(a).__name__} cannot be "
                                  f"recorded in a graph")

    def to_bool(self, obj: "Proxy") -> bool:
        raise TraceError("symbolically traced variables cannot be used as inputs to control "
                         "flow")

    def iter(self, obj: "Proxy"):
        raise TraceError("Proxy object cannot be iterated. This can be attempted when the "
                         "Proxy is used in a loop or as a *args or **kwargs function argument. "
                         "See the torch.fx docs for what control flow can be traced")

    def keys(self, obj: "Proxy") -> Any:
        return Attribute(obj, "keys")()


def _is_plain_kiln_value(a: Any) -> bool:
    import kiln
    return isinstance(a, (kiln.dtype, kiln.device, kiln.Size, kiln.memory_format))


class GraphAppendingTracer(TracerBase):
    """A tracer that only appends to an existing Graph: `Proxy(graph.placeholder("x"),
    GraphAppendingTracer(graph))` builds graphs by hand. While it is alive, kiln functions
    called on its proxies record nodes."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        FUNCTION_PATCH.enter()
        weakref.finalize(self, FUNCTION_PATCH.exit)


class Proxy:
    """A value of a traced program: it holds the Node that computes it. Operators, methods and
    kiln functions applied to it append Nodes (`x + 1`, `x.sum(1)`, `kiln.relu(x)`)."""

    def __init__(self, node: Node, tracer: TracerBase | None = None) -> None:
        if tracer is None:
            tracer = GraphAppendingTracer(node.graph)
        self.tracer = tracer
        self.node = node

    def __repr__(self) -> str:
        return f"Proxy({self.node.name})"

    def __getattr__(self, k: str) -> "Attribute":
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)            # copy/pickle probes: not graph attributes
        return Attribute(self, k)

    def __call__(self, *args, **kwargs) -> "Proxy":
        return self.tracer.create_proxy("call_method", "__call__", (self,) + args, kwargs)

    def __iter__(self):
        # `a, b = proxy` unpacks a known number of values: one getitem each
        frame = inspect.currentframe().f_back
        for inst in dis.get_instructions(frame.f_code):
            if inst.offset == frame.f_lasti:
                if inst.opname == "UNPACK_SEQUENCE":
                    return (self[i] for i in range(inst.argval))
                break
        return self.tracer.iter(self)

    def __bool__(self) -> bool:
        return self.tracer.to_bool(self)

    def __len__(self) -> int:
        raise RuntimeError("'len' is not supported in symbolic tracing by default. If you want "
                           "this call to be recorded, please call kiln.fx.wrap('len') at module "
                           "scope")

    def __index__(self) -> int:
        raise TraceError("a traced value cannot be used as a Python int (indexing a list, "
                         "range(...)): make it a concrete_args entry")

    def keys(self):
        return self.tracer.keys(self)

    def __deepcopy__(self, memo: dict) -> "Proxy":
        raise TraceError("kiln.fx: a Proxy cannot be deep-copied during tracing")


class Attribute(Proxy):
    """`proxy.name`: a `getattr` node when used as a value, a call_method node when called."""

    def __init__(self, root: Proxy, attr: str) -> None:
        self.root, self.attr, self.tracer = root, attr, root.tracer
        self._node: Node | None = None

    @property
    def node(self) -> Node:       # made on first use: a method call needs no getattr node
        if self._node is None:
            self._node = self.tracer.create_proxy("call_function", getattr,
                                                  (self.root, self.attr), {}).node
        return self._node

    def __call__(self, *args, **kwargs) -> Proxy:
        return self.tracer.create_proxy("call_method", self.attr, (self.root,) + args, kwargs)


def _binary(target: Callable) -> Callable:
    def impl(*args):
        return args[0].tracer.create_proxy("call_function", target, args, {})
    return impl


def _reflected(target: Callable) -> Callable:
    def impl(self, rhs):
        return self.tracer.create_proxy("call_function", target, (rhs, self), {})
    return impl


# set after the class body, so Proxy stays hashable (a class defining __eq__ is not)
for _name in MAGIC:
    if hasattr(operator, _name):                  # (Python 3 has no operator.div)
        setattr(Proxy, f"__{_name.strip('_')}__", _binary(getattr(operator, _name)))
for _name in REFLECTABLE_MAGIC:
    if hasattr(operator, _name):
        setattr(Proxy, f"__r{_name.strip('_')}__", _reflected(getattr(operator, _name)))


# ----------------------------------------------------------------------------- kiln functions

def find_proxy(args: tuple, kwargs: dict) -> Proxy | None:
    """The first Proxy among the (nested) arguments, or None."""
    for a in args:
        found = _proxy_in(a)
        if found is not None:
            return found
    for a in kwargs.values():
        found = _proxy_in(a)
        if found is not None:
            return found
    return None


def _proxy_in(a: Any) -> Proxy | None:
    if isinstance(a, Proxy):
        return a
    if isinstance(a, (tuple, list)):
        for e in a:
            found = _proxy_in(e)
            if found is not None:
                return found
    elif isinstance(a, dict):
        for e in a.values():
            found = _proxy_in(e)
            if found is not None:
                return found
    elif isinstance(a, slice):
        return _proxy_in((a.start, a.stop, a.step))
    return None


_WRAPPERS: dict = {}         # id(function) -> (function, its proxy-aware wrapper)
_SKIP = {"is_tensor", "is_storage", "compile", "typename"}
_TENSOR_OPERATORS = tuple(f"__{n.strip('_')}__" for n in MAGIC
                          if n not in ("pos", "neg", "invert", "div")) + \
    tuple(f"__r{n.strip('_')}__" for n in REFLECTABLE_MAGIC if n != "div")


def proxy_aware(fn: Callable, *, wrapped: bool = False) -> Callable:
    """`fn`, recording a call_function node instead when any argument is a Proxy."""
    key = (id(fn), wrapped)
    cached = _WRAPPERS.get(key)
    if cached is not None:
        return cached[1]

    @functools.wraps(fn)
    def call(*args, **kwargs):
        proxy = find_proxy(args, kwargs)
        if proxy is None:
            return fn(*args, **kwargs)
        result = proxy.tracer.create_proxy("call_function", fn, args, kwargs)
        if wrapped:
            result.node.meta["is_wrapped"] = True
        return result

    call.__fx_original__ = fn
    _WRAPPERS[key] = (fn, call)
    return call


def _steps_aside(name: str, method: Callable) -> Callable:
    """A Tensor operator that returns NotImplemented for a Proxy operand, so Python asks the
    Proxy's reflected operator (`t * proxy` is the Proxy's `__rmul__`); indexing, which has no
    reflected form, records `t[proxy]` as a `__getitem__` method call."""
    if name == "__getitem__":
        @functools.wraps(method)
        def index(self, key):
            proxy = _proxy_in(key)
            if proxy is not None:
                return proxy.tracer.create_proxy("call_method", "__getitem__", (self, key),
                                                 {})             # as torch records it
            return method(self, key)
        return index

    @functools.wraps(method)
    def call(self, other, *rest):
        if isinstance(other, Proxy):
            return NotImplemented
        return method(self, other, *rest)
    return call


def _public_function_namespaces() -> list:
    import kiln
    import kiln.nn.functional
    return [kiln, kiln.nn.functional, kiln.linalg, kiln.special, kiln.fft]


def _patchable(name: str, value: Any) -> bool:
    return (not name.startswith("_") and name not in _SKIP
            and isinstance(value, (types.FunctionType, types.BuiltinFunctionType,
                                   functools.partial)))


class Patcher:
    """Attribute and dict-entry replacements, undone in reverse order by `restore()`."""

    def __init__(self) -> None:
        self._undo: list = []

    def set_item(self, d: dict, key: str, value: Any) -> None:
        self._undo.append((d, key, d.get(key, _MISSING)))
        d[key] = value

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        self._undo.append((obj, name, obj.__dict__.get(name, _MISSING)))
        setattr(obj, name, value)

    def restore(self) -> None:
        for d, key, old in reversed(self._undo):
            if not isinstance(d, dict):
                if old is _MISSING:
                    delattr(d, key)
                else:
                    setattr(d, key, old)
            elif old is _MISSING:
                d.pop(key, None)
            else:
                d[key] = old
        self._undo.clear()

    def __enter__(self) -> "Patcher":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


class _FunctionPatch:
    """Counts the tracers that may record; while there is one, kiln's public functions and the
    Tensor operators are proxy-aware (above)."""

    def __init__(self) -> None:
        self.depth = 0
        self._patcher = Patcher()
        self.originals: dict = {}      # id(kiln function) -> the function

    def enter(self) -> None:
        self.depth += 1
        if self.depth == 1:
            self._install()

    def exit(self) -> None:
        if self.depth == 0:
            return
        self.depth -= 1
        if self.depth == 0:
            self._patcher.restore()

    def _install(self) -> None:
        from kiln import Tensor
        for space in _public_function_namespaces():
            d = vars(space)
            for name, value in list(d.items()):
                if _patchable(name, value):
                    self.originals[id(value)] = value
                    self._patcher.set_item(d, name, proxy_aware(value))
        import kiln
        # `kiln.conv2d` and friends are resolved on each use (kiln.__getattr__), not stored in
        # the namespace: their wrappers are stored for the window, and removed after it
        for name in getattr(kiln, "_torch_namespace").LAZY:
            value = getattr(kiln, name, None) if name not in vars(kiln) else None
            value = getattr(value, "__fx_original__", value)     # (nn.functional's, wrapped)
            if value is not None and _patchable(name, value):
                self.originals[id(value)] = value
                self._patcher.set_item(vars(kiln), name, proxy_aware(value))
        from kiln.profiler import ops as profiler_ops      # torch.ops.profiler: every function
        for name, value in list(vars(profiler_ops).items()):
            if isinstance(value, types.FunctionType) and value.__module__ == profiler_ops.__name__:
                self.originals[id(value)] = value
                self._patcher.set_item(vars(profiler_ops), name, proxy_aware(value))
        for name in _TENSOR_OPERATORS:
            method = getattr(Tensor, name, None)
            if method is not None:
                self._patcher.set_attr(Tensor, name, _steps_aside(name, method))

    def is_kiln_function(self, value: Any) -> bool:
        return self.originals.get(id(value)) is value


def patch_globals(patcher: Patcher, g: dict, extra: dict, done: set) -> None:
    """Names in a traced function's module globals bound straight to kiln functions
    (`from kiln import relu`) or to `extra`'s functions (math's) become proxy-aware for the
    trace, as torch.fx autowraps them."""
    if id(g) in done:
        return
    done.add(id(g))
    for name, value in list(g.items()):
        if name.startswith("__") or not callable(value) or hasattr(value, "__fx_original__"):
            continue
        if FUNCTION_PATCH.is_kiln_function(value):
            patcher.set_item(g, name, proxy_aware(value))
        elif extra.get(id(value)) is value:      # as torch, marked wrapped: code re-wraps it
            patcher.set_item(g, name, proxy_aware(value, wrapped=True))


_MISSING = object()
FUNCTION_PATCH = _FunctionPatch()
