"""`kiln.fx.symbolic_trace` and `Tracer`: run a module's forward on Proxies and record each
call into a Graph; kiln.nn's own modules stay whole (`call_module`), as torch.nn's do."""

from __future__ import annotations

import builtins
import inspect
import math
import types
import warnings
from collections import OrderedDict
from typing import Any, Callable

import kiln
from kiln.fx.graph import Graph
from kiln.fx.node import Argument
from kiln.fx.proxy import (FUNCTION_PATCH, Patcher, TracerBase, find_proxy, patch_globals,
                           proxy_aware)

_WRAPPED: list = []          # (module globals, function name) registered by `wrap`
_ACTIVE: list = []           # the tracers now running `trace`, innermost last


def wrap(fn_or_name: str | Callable) -> str | Callable:
    """At module scope, `wrap("name")` (or `@wrap`) makes calls of that module-level function
    on traced values one `call_function` node instead of being traced through (`len`, a
    function with control flow)."""
    name = fn_or_name if isinstance(fn_or_name, str) else fn_or_name.__name__
    frame = inspect.currentframe().f_back
    if frame.f_code.co_name != "<module>":
        raise NotImplementedError("kiln.fx.wrap must be called at the top level of a module")
    if not any(g is frame.f_globals and n == name for g, n in _WRAPPED):
        _WRAPPED.append((frame.f_globals, name))
    return fn_or_name


class PHBase:
    """The type of `PH`: a `concrete_args` value that keeps its argument traced."""

    def __repr__(self) -> str:
        return "PH"


PH = PHBase()


def _assert(condition: Any, message: str) -> None:
    """The runtime check a specialized graph makes (torch._assert); on a traced value, a
    node of the graph."""
    proxy = find_proxy((condition,), {})
    if proxy is not None:
        return proxy.tracer.create_proxy("call_function", _assert, (condition, message), {})
    if not bool(condition):
        raise AssertionError(message)


def _assert_is_none(value: Any, message: str) -> None:
    proxy = find_proxy((value,), {})
    if proxy is not None:
        return proxy.tracer.create_proxy("call_function", _assert_is_none, (value, message),
                                         {})
    if value is not None:
        raise AssertionError(message)


class ProxyableClassMeta(type):
    """A metaclass whose classes, constructed from traced values during symbolic tracing,
    become one call_function node (the class is the target) instead of running __init__ on
    proxies: `class TensorPair(metaclass=ProxyableClassMeta)`."""

    def __call__(cls, *args, **kwargs):
        proxy = find_proxy(args, kwargs)
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", cls, args, kwargs)
        return super().__call__(*args, **kwargs)


def _math_functions(modules: tuple) -> dict:
    return {id(v): v for m in modules for k, v in vars(m).items()
            if callable(v) and not k.startswith("_")}


class Tracer(TracerBase):
    """Symbolic tracer: `Tracer().trace(module_or_fn)` returns the Graph of its forward.

    Subclass it to change what is recorded: `is_leaf_module` (which modules stay one
    call_module node), `create_arg` (how values become arguments), `call_module`, `getattr`.
    """

    def __init__(self, autowrap_modules: tuple = (math,), autowrap_functions: tuple = (),
                 param_shapes_constant: bool = False) -> None:
        super().__init__()
        self._autowrap = _math_functions(autowrap_modules)
        self._autowrap.update({id(f): f for f in autowrap_functions})
        self.param_shapes_constant = param_shapes_constant
        self.submodule_paths: dict | None = None
        self.root: kiln.nn.Module | None = None
        self.tensor_attrs: dict = {}

    # ------------------------------------------------------------------ policy
    def is_leaf_module(self, m: kiln.nn.Module, module_qualified_name: str) -> bool:
        """kiln.nn's modules (but Sequential) are leaves: one call_module node each."""
        return m.__module__.startswith("kiln.nn") and not isinstance(m, kiln.nn.Sequential)

    def path_of_module(self, mod: kiln.nn.Module) -> str:
        if self.submodule_paths is None:
            self.submodule_paths = {id(m): n for n, m in self.root.named_modules()}
        path = self.submodule_paths.get(id(mod))
        if path is None:
            raise NameError(f"kiln.fx: module {type(mod).__name__} is not installed as a "
                            f"submodule of the traced module")
        return path

    def call_module(self, m: kiln.nn.Module, forward: Callable, args: tuple,
                    kwargs: dict) -> Any:
        """A leaf module becomes a call_module node; any other is traced through."""
        path = self.path_of_module(m)
        added = path not in self.module_stack
        if added:
            self.module_stack[path] = (path, type(m))
        try:
            if not self.is_leaf_module(m, path):
                forward_fn = getattr(type(m), "forward", None)
                if self._patcher is not None and hasattr(forward_fn, "__globals__"):
                    patch_globals(self._patcher, forward_fn.__globals__, self._autowrap,
                                  self._patched_globals)
                return forward(*args, **kwargs)
            return self.create_proxy("call_module", path, args, kwargs)
        finally:
            if added:
                self.module_stack.pop(path, None)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        """A module attribute read during the trace: a parameter (or buffer) is one get_attr
        node, made on its first read."""
        if isinstance(attr_val, kiln.Tensor):
            name = self._param_names.get(id(attr_val))
            if name is None and self.proxy_buffer_attributes and \
                    not isinstance(attr_val, kiln.nn.Parameter):
                name = self._buffer_names.get(id(attr_val))
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return attr_val

    def create_arg(self, a: Any) -> Argument:
        """Parameters, buffers and submodules of the root become get_attr nodes; any other
        tensor is stored on the root as `_tensor_constantN`."""
        if isinstance(a, kiln.nn.Parameter):
            name = self._param_names.get(id(a))
            if name is None:
                raise NameError("kiln.fx: a parameter used in forward is not a member of the "
                                "traced module")
            return self.create_node("get_attr", name, (), {})
        if isinstance(a, kiln.Tensor):
            name = self._buffer_names.get(id(a)) or self.tensor_attrs.get(id(a))
            if name is None:
                i = 0
                while hasattr(self.root, f"_tensor_constant{i}"):
                    i += 1
                name = f"_tensor_constant{i}"
                object.__setattr__(self.root, name, a)
                self.tensor_attrs[id(a)] = name
            return self.create_node("get_attr", name, (), {})
        if isinstance(a, kiln.nn.Module):
            return self.create_node("get_attr", self.path_of_module(a), (), {})
        return super().create_arg(a)

    # ------------------------------------------------------------------ tracing
    def create_args_for_root(self, root_fn: Callable, is_module: bool,
                             concrete_args: dict | None = None) -> tuple:
        """(the function to run, its arguments): one placeholder Proxy per parameter, in the
        order of the function's locals (positional, keyword-only, *args, **kwargs); a `*args`
        or `**kwargs` parameter is one placeholder (`*args`) whose Proxy the function gets
        whole, by a copy of it with plain parameters in their place. A decorated function
        (`functools.wraps`) is read through its `__wrapped__` chain, and the wrapper is called
        with the wrapped function's parameters, as torch.fx does."""
        wrapper, root_fn = root_fn, inspect.unwrap(root_fn)
        code = root_fn.__code__
        n_plain = code.co_argcount + code.co_kwonlyargcount
        varargs = bool(code.co_flags & inspect.CO_VARARGS)
        varkw = bool(code.co_flags & inspect.CO_VARKEYWORDS)
        names = code.co_varnames[:n_plain + varargs + varkw]
        sig = inspect.signature(root_fn)
        concrete = dict(concrete_args or {})
        args = [self.root] if is_module else []
        for i, name in enumerate(names[1 if is_module else 0:], 1 if is_module else 0):
            if i >= n_plain:                     # *args, then **kwargs
                star = "*" if varargs and i == n_plain else "**"
                args.append(self.create_proxy("placeholder", star + name, (), {}))
                continue
            p = sig.parameters[name]
            default = () if p.default is inspect.Parameter.empty else (p.default,)
            if name in concrete:
                args.append(self._concrete_placeholder(name, concrete.pop(name), default))
                continue
            args.append(self.create_proxy("placeholder", name, default, {},
                                          type_expr=root_fn.__annotations__.get(name)))
        if concrete:
            raise TypeError(f"kiln.fx.symbolic_trace: concrete_args names {sorted(concrete)} "
                            f"that {root_fn.__qualname__} does not take")
        if varargs or varkw:
            flat = code.replace(co_flags=code.co_flags & ~(inspect.CO_VARARGS |
                                                           inspect.CO_VARKEYWORDS),
                                co_argcount=len(names), co_kwonlyargcount=0)
            return types.FunctionType(flat, root_fn.__globals__, root_fn.__name__, None,
                                      root_fn.__closure__), args
        return wrapper, args

    def _concrete_placeholder(self, name: str, value: Any, default: tuple) -> Any:
        """A concrete argument: the traced forward sees `value` (the graph is specialized to
        it); the parameter stays (`name_1`), and the graph asserts it gets that value again.
        `PH` keeps the argument a traced one."""
        out = self.create_proxy("placeholder", f"{name}_1", default, {})
        if isinstance(value, PHBase):
            return out
        message = f"{name} has been specialized to have value {value} but got another value"
        if type(value) in (bool, int, float, str):
            self.create_proxy("call_function", _assert, (out == value, message), {})
        elif value is None:
            self.create_proxy("call_function", _assert_is_none, (out, message), {})
        else:
            warnings.warn(f"Was not able to add assertion to guarantee correct input {name} to "
                          f"specialized function. It is up to the user to make sure that your "
                          f"inputs match the inputs you specialized the function with.")
        return value

    def trace(self, root: kiln.nn.Module | Callable,
              concrete_args: dict | None = None) -> Graph:
        """The Graph of `root`'s forward (or of function `root`), traced on Proxies."""
        is_module = isinstance(root, kiln.nn.Module)
        if is_module:
            self.root = root
            fn = type(root).forward
        else:
            self.root = kiln.nn.Module()
            fn = root
        self.graph = Graph(tracer_cls=type(self))
        self.submodule_paths = None
        self.tensor_attrs = {}
        self._param_names = {id(p): n for n, p in self.root.named_parameters()}
        self._buffer_names = {id(b): n for n, b in self.root.named_buffers()}
        self.module_stack = OrderedDict()
        self._patched_globals: set = set()
        annotations = fn.__annotations__
        fn, args = self.create_args_for_root(fn, is_module, concrete_args)
        self._patcher = Patcher()
        FUNCTION_PATCH.enter()
        _ACTIVE.append(self)
        try:
            self._patch_modules_and_wraps(fn)
            result = fn(*args)
            self.create_node("output", "output", (self.create_arg(result),), {},
                             type_expr=annotations.get("return"))
        finally:
            _ACTIVE.remove(self)
            self._patcher.restore()
            self._patcher = None
            FUNCTION_PATCH.exit()
            self.submodule_paths = None
        return self.graph

    _patcher: Patcher | None = None

    def _patch_modules_and_wraps(self, fn: Callable) -> None:
        patcher = self._patcher
        Module = kiln.nn.Module
        # (a trace inside a traced forward finds the outer trace's wrappers: unwrap them)
        orig_call = getattr(Module.__call__, "__fx_original__", Module.__call__)
        orig_getattr = getattr(Module.__getattr__, "__fx_original__", Module.__getattr__)
        parameter_proxy_cache: dict = {}
        tracer = self

        def module_call(mod, *args, **kwargs):
            def forward(*a, **k):
                return orig_call(mod, *a, **k)
            return tracer.call_module(mod, forward, args, kwargs)

        def module_getattr(mod, attr):
            value = orig_getattr(mod, attr)
            return tracer.getattr(attr, value, parameter_proxy_cache)

        module_call.__fx_original__ = orig_call
        module_getattr.__fx_original__ = orig_getattr
        patcher.set_attr(Module, "__call__", module_call)
        patcher.set_attr(Module, "__getattr__", module_getattr)
        for g, name in _WRAPPED:
            original = g.get(name, getattr(builtins, name, None))
            if original is not None:
                patcher.set_item(g, name, proxy_aware(getattr(original, "__fx_original__",
                                                              original), wrapped=True))
        if hasattr(fn, "__globals__"):
            patch_globals(patcher, fn.__globals__, self._autowrap, self._patched_globals)


def symbolic_trace(root: kiln.nn.Module | Callable, concrete_args: dict | None = None):
    """`root` (a kiln.nn.Module or a function) as a GraphModule: its forward traced on
    Proxies, as torch.fx.symbolic_trace."""
    from kiln.fx.graph_module import GraphModule
    tracer = Tracer()
    graph = tracer.trace(root, concrete_args)
    name = type(root).__name__ if isinstance(root, kiln.nn.Module) else root.__name__
    return GraphModule(tracer.root, graph, name)



