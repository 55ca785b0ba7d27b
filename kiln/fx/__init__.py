"""`kiln.fx`: torch.fx for kiln - capture a module as a Python-level graph of calls by running
its forward on Proxies (`symbolic_trace`), edit the Graph, and run it again as a GraphModule.

This is the user-facing graph of PyTorch's fx (placeholder, get_attr, call_function,
call_method, call_module, output), not kiln's compiler IR (`kiln.ir`): a GraphModule is an
ordinary kiln.nn.Module, so `kiln.compile` compiles it like any other.
"""

from kiln.fx.node import Node, map_arg, map_aggregate, has_side_effect  # noqa: F401
from kiln.fx.graph import Graph, PythonCode  # noqa: F401
from kiln.fx.proxy import Proxy, Attribute, TraceError, GraphAppendingTracer  # noqa: F401
from kiln.fx import proxy, node, graph  # noqa: F401
from kiln.fx._symbolic_trace import (Tracer, symbolic_trace, wrap,  # noqa: F401
                                     ProxyableClassMeta, PH)
from kiln.fx.graph_module import GraphModule  # noqa: F401
from kiln.fx import graph_module  # noqa: F401
from kiln.fx.interpreter import Interpreter, Transformer  # noqa: F401
from kiln.fx import interpreter, passes  # noqa: F401
from kiln.fx.passes import shape_prop  # noqa: F401
from kiln.fx import subgraph_rewriter  # noqa: F401
from kiln.fx.subgraph_rewriter import replace_pattern  # noqa: F401
