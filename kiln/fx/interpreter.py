"""`kiln.fx.Interpreter` runs a GraphModule's graph node by node (override one op kind to
change what happens), and `Transformer` runs it on Proxies to build a new GraphModule."""

from __future__ import annotations

import inspect
from typing import Any, Iterator

import kiln
from kiln.fx.graph import Graph
from kiln.fx.graph_module import GraphModule
from kiln.fx.node import Argument, Node, Target, map_aggregate, map_arg
from kiln.fx.proxy import FUNCTION_PATCH, Proxy
from kiln.fx._symbolic_trace import Tracer


class Interpreter:
    """Run `module`'s graph with `run(*args)`: each node through `run_node`, which calls the
    method named by its op (`call_function`, `call_module`, ...), each overridable. A value
    is dropped after its last use when `garbage_collect_values` is set."""

    def __init__(self, module: kiln.nn.Module, garbage_collect_values: bool = True,
                 graph: Graph | None = None) -> None:
        self.module = module
        self.submodules = dict(module.named_modules())
        self.graph = graph if graph is not None else module.graph
        self.env: dict = {}
        self.name = "Interpreter"
        self.garbage_collect_values = garbage_collect_values
        self.extra_traceback = True
        if garbage_collect_values:
            last_use: dict = {}
            self.user_to_last_uses: dict = {}
            for node in reversed(list(self.graph.nodes)):
                for inp in node._input_nodes:
                    if inp not in last_use:
                        last_use[inp] = node
                        self.user_to_last_uses.setdefault(node, []).append(inp)

    def run(self, *args, initial_env: dict | None = None, enable_io_processing: bool = True):
        """The graph's result on `args` (positional, in placeholder order)."""
        self.env = dict(initial_env or {})
        self.args_iter: Iterator = iter(args)
        for node in self.graph.nodes:
            if node in self.env:
                continue
            try:
                self.env[node] = self.run_node(node)
            except Exception as e:
                if self.extra_traceback:
                    e.add_note(f"While executing {node.format_node()}")
                raise
            if self.garbage_collect_values:
                for to_delete in self.user_to_last_uses.get(node, []):
                    del self.env[to_delete]
            if node.op == "output":
                return self.env[node]
        return None

    def boxed_run(self, args_list: list):
        args = list(args_list)
        args_list.clear()
        return self.run(*args)

    def run_node(self, n: Node) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        return getattr(self, n.op)(n.target, args, kwargs)

    # ------------------------------------------------------------------ one per op
    def placeholder(self, target: Target, args: tuple, kwargs: dict) -> Any:
        if target.startswith("*"):
            return list(self.args_iter)
        try:
            return next(self.args_iter)
        except StopIteration:
            if args:
                return args[0]
            raise RuntimeError(f"Expected positional argument for parameter {target}, but one "
                               f"was not passed in!") from None

    def get_attr(self, target: Target, args: tuple, kwargs: dict) -> Any:
        return self.fetch_attr(target)

    def call_function(self, target: Target, args: tuple, kwargs: dict) -> Any:
        return target(*args, **kwargs)

    def call_method(self, target: Target, args: tuple, kwargs: dict) -> Any:
        self_obj, *rest = args
        return getattr(self_obj, target)(*rest, **kwargs)

    def call_module(self, target: Target, args: tuple, kwargs: dict) -> Any:
        return self.fetch_attr(target)(*args, **kwargs)

    def output(self, target: Target, args: tuple, kwargs: dict) -> Any:
        return args[0]

    # ------------------------------------------------------------------ helpers
    def fetch_attr(self, target: str) -> Any:
        obj = self.module
        for i, atom in enumerate(target.split(".")):
            if not hasattr(obj, atom):
                where = ".".join(target.split(".")[:i])
                raise RuntimeError(f"Node referenced nonexistent target {where or 'root'}."
                                   f"{atom}")
            obj = getattr(obj, atom)
        return obj

    def fetch_args_kwargs_from_env(self, n: Node) -> tuple:
        args = self.map_nodes_to_values(n.args, n)
        kwargs = self.map_nodes_to_values(n.kwargs, n)
        return args, kwargs

    def map_nodes_to_values(self, args: Argument, n: Node) -> Argument:
        def load(n_arg: Node) -> Any:
            if n_arg not in self.env:
                raise RuntimeError(f"Node {n} referenced nonexistent value {n_arg}! Run "
                                   f"Graph.lint() to diagnose such issues")
            return self.env[n_arg]
        return map_arg(args, load)


class _TransformerTracer(Tracer):
    def __init__(self, graph: Graph, root: kiln.nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self.root = root
        self._param_names = {id(p): n for n, p in root.named_parameters()}
        self._buffer_names = {id(b): n for n, b in root.named_buffers()}
        self.tensor_attrs = {}

    def is_leaf_module(self, m: kiln.nn.Module, module_qualified_name: str) -> bool:
        return True


class Transformer(Interpreter):
    """Build a new GraphModule by running the graph on Proxies: override `call_function`,
    `call_module`, ... to emit something else (`transform()` returns the result)."""

    def __init__(self, module: GraphModule) -> None:
        super().__init__(module)
        self.new_graph = Graph()
        self.tracer = _TransformerTracer(self.new_graph, module)

    def placeholder(self, target: Target, args: tuple, kwargs: dict) -> Proxy:
        default = args[0] if args else inspect.Signature.empty
        return Proxy(self.new_graph.placeholder(target, default_value=default), self.tracer)

    def get_attr(self, target: Target, args: tuple, kwargs: dict) -> Proxy:
        return self.tracer.create_proxy("get_attr", target, args, kwargs)

    def call_module(self, target: Target, args: tuple, kwargs: dict) -> Any:
        submod = self.fetch_attr(target)
        return self.tracer.call_module(submod, submod.forward, args, kwargs)

    def call_function(self, target: Target, args: tuple, kwargs: dict) -> Any:
        return self.tracer.create_proxy("call_function", target, args, kwargs)

    def call_method(self, target: Target, args: tuple, kwargs: dict) -> Any:
        return self.tracer.create_proxy("call_method", target, args, kwargs)

    def transform(self) -> GraphModule:
        """The new GraphModule: this Transformer's version of every node."""
        FUNCTION_PATCH.enter()          # kiln.relu(proxy) in an override records a node
        try:
            result = super().run(enable_io_processing=False)
        finally:
            FUNCTION_PATCH.exit()
        if result is not None:
            def strip(a: Any) -> Any:
                return a.node if isinstance(a, Proxy) else a
            self.new_graph.output(map_aggregate(result, strip))
        return GraphModule(self.module, self.new_graph)
