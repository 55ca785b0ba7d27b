"""A PyTorch script in the patterns of pytorch/examples' fx/ folder (invert.py, replace_op.py,
wrap_output_dynamically.py, primitive_library.py, module_tracer.py): it traces, rewrites and
runs graphs and prints the generated code and the results. tests/fx/test_fx_kiln_run.py runs
it under PyTorch and under `python -m kiln run` and compares the printouts."""

import operator

import torch
import torch.fx
from torch.fx import GraphModule, Proxy, symbolic_trace

torch.manual_seed(0)

# --- invert.py: build the inverse of a function's graph, node by node
inverses = {torch.exp: torch.log, torch.log: torch.exp, torch.tan: torch.arctan,
            torch.arctan: torch.tan}


def invert(model) -> torch.nn.Module:
    fx_model = symbolic_trace(model)
    new_graph = torch.fx.Graph()
    env = {}
    for node in reversed(fx_model.graph.nodes):
        if node.op == "call_function":
            new_node = new_graph.call_function(inverses[node.target], (env[node.name],))
            env[node.args[0].name] = new_node
        elif node.op == "output":
            env[node.args[0].name] = new_graph.placeholder(node.name)
        elif node.op == "placeholder":
            new_graph.output(env[node.name])
    new_graph.lint()
    return GraphModule(fx_model, new_graph)


def f(x):
    return torch.exp(torch.tan(x))


res = invert(f)
print(res.code)
print("invert:", [round(v, 4) for v in f(res(torch.arange(5) + 1.0)).tolist()])


# --- replace_op.py: every add becomes a mul
class M(torch.nn.Module):
    def forward(self, x, y):
        return x + y, torch.add(x, y), x.add(y)


traced = symbolic_trace(M())
for n in traced.graph.nodes:
    if any(n.target == p for p in (operator.add, torch.add, "add")):
        with traced.graph.inserting_after(n):
            new_node = traced.graph.call_function(torch.mul, n.args, n.kwargs)
            n.replace_all_uses_with(new_node)
        traced.graph.erase_node(n)
traced.recompile()
print(traced.code)
print("replace:", [t.tolist() for t in traced(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))])


# --- wrap_output_dynamically.py: wrap the output in a traced activation
class Cat(torch.nn.Module):
    def forward(self, x, y):
        return torch.cat([x, y])


traced = symbolic_trace(Cat())
x, y = torch.randn(5, 3), torch.randn(5, 3)
orig_output = traced(x, y)
output_node = next(n for n in reversed(traced.graph.nodes) if n.op == "output")
wrap_node = output_node.all_input_nodes[0]
activation = symbolic_trace(torch.nn.LeakyReLU(0.2))
with traced.graph.inserting_after(wrap_node):
    output_node.args = (activation(Proxy(wrap_node)).node,)
traced.recompile()
print(traced.code)
torch.testing.assert_close(traced(x, y), torch.nn.LeakyReLU(0.2)(orig_output))
print("wrap output:", round(traced(x, y).sum().item(), 4))


# --- primitive_library.py: a wrapped composite, then inlined with a GraphAppendingTracer
def sigmoid_double(x):
    x = x.double()
    x = x.sigmoid()
    return x.float()


torch.fx.wrap("sigmoid_double")


class Foo(torch.nn.Module):
    def forward(self, x, y):
        return sigmoid_double(x) + sigmoid_double(y)


traced = symbolic_trace(Foo())
print("wrapped:", [n.op + ":" + getattr(n.target, "__name__", str(n.target))
                   for n in traced.graph.nodes])
for node in list(traced.graph.nodes):
    if node.op == "call_function" and node.target is sigmoid_double:
        tracer = torch.fx.proxy.GraphAppendingTracer(node.graph)
        with node.graph.inserting_before(node):
            args = torch.fx.node.map_arg(node.args, lambda a: Proxy(a, tracer))
            out = node.target(*args)
            node.replace_all_uses_with(out.node)
            node.graph.erase_node(node)
traced.recompile()
print(traced.code)
print("inlined:", [round(v, 4) for v in traced(torch.tensor([0.5, -1.0]),
                                                torch.tensor([2.0, 0.0])).tolist()])


# --- module_tracer.py: which module each node came from
class ModulePathTracer(torch.fx.Tracer):
    current = ""

    def __init__(self):
        super().__init__()
        self.origin = {}

    def call_module(self, m, forward, args, kwargs):
        old = self.current
        try:
            self.current = self.path_of_module(m)
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.current = old

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr)
        self.origin[proxy.node] = self.current
        return proxy


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


net = torch.nn.Sequential(Block(), Block(), torch.nn.Flatten())
tracer = ModulePathTracer()
graph = tracer.trace(net)
for node in graph.nodes:
    print("Node", node, "is from module", tracer.origin.get(node))
gm = GraphModule(net, graph)
inp = torch.randn(2, 3, 4, 4)
print("module path:", round(gm(inp).sum().item(), 3), round(net(inp).sum().item(), 3))
