"""kiln.fx against torch.fx: the same model code traced by both gives the same nodes, the same
printed graph and generated code (torch's names read `kiln` for `torch`), and the same values;
graph edits in the patterns of pytorch/examples' fx scripts give torch's results."""

import operator
from math import sqrt

import numpy as np
import pytest
import torch
import torch.fx

import kiln
import kiln.fx


def _helper_scale(x, k):
    """A function with Python control flow on its non-traced argument, kept whole by wrap."""
    return x * k if k > 1 else x


torch.fx.wrap("_helper_scale")
kiln.fx.wrap("_helper_scale")


def to_np(t):
    if isinstance(t, torch.Tensor):
        return t.detach().numpy()
    return t.detach().numpy() if isinstance(t, kiln.Tensor) else np.asarray(t)


def kiln_text(text: str) -> str:
    """torch.fx's printout with kiln's spelling of the framework's names."""
    return text.replace("torch.nn.functional.", "kiln.nn.functional.").replace("torch.", "kiln.")


def same_weights(kiln_module, torch_module):
    """Give the kiln module the torch module's parameters and buffers (same keys)."""
    state = {k: kiln.tensor(v.detach().numpy().copy()) for k, v in
             torch_module.state_dict().items()}
    kiln_module.load_state_dict(state)


def signature(graph):
    """(op, target's printed name, args with nodes as names) per node, framework-neutral."""
    def name(target):
        if isinstance(target, torch.fx.Graph):
            return None
        if isinstance(graph, torch.fx.Graph):
            return kiln_text(torch.fx.Node._pretty_print_target(target))
        return kiln.fx.node.pretty_target(target)

    def arg(a):
        if isinstance(a, (list, tuple)):
            return type(a)(arg(e) for e in a)
        if isinstance(a, dict):
            return {k: arg(v) for k, v in a.items()}
        if isinstance(a, (torch.fx.Node, kiln.fx.Node)):
            return "%" + a.name
        return a
    return [(n.op, n.name, name(n.target), arg(n.args), arg(n.kwargs)) for n in graph.nodes]


def make_net(fw):
    nn = fw.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
            self.scale = nn.Parameter(fw.ones(4) * 0.5)

        def forward(self, x, y=2.0):
            a = self.seq(self.lin(x)) * self.scale + self.lin.weight.sum()
            b = a.relu().sum(dim=-1, keepdim=True)
            c = fw.cat([a, b], 1)
            d = fw.tanh(c[:, :3]) - x.size(0)
            return {"out": d * y, "pair": (fw.sigmoid(a), b.neg())}
    return Net()


def test_trace_gives_torch_fx_nodes_graph_and_code():
    tm, km = make_net(torch), make_net(kiln)
    tg, kg = torch.fx.symbolic_trace(tm), kiln.fx.symbolic_trace(km)
    assert signature(kg.graph) == signature(tg.graph)
    assert str(kg.graph) == kiln_text(str(tg.graph))
    assert kg.code == kiln_text(tg.code)
    for kn, tn in zip(kg.graph.nodes, tg.graph.nodes):
        assert [u.name for u in kn.users] == [u.name for u in tn.users]
        assert [u.name for u in kn.all_input_nodes] == [u.name for u in tn.all_input_nodes]
        stack = tn.meta.get("nn_module_stack")
        assert (kn.meta.get("nn_module_stack") is None) == (stack is None)
        if stack:
            assert list(kn.meta["nn_module_stack"]) == list(stack)


def make_idioms(fw):
    class Idioms(fw.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = fw.nn.Parameter(fw.ones(4, 2) * 0.25)
            self.register_buffer("shift", fw.arange(2.0))

        def forward(self, x):
            h = x.view(x.size(0), -1)[:, 0:4] @ self.w + self.shift
            h = h + self.shift[fw.argmax(h[0], 0)]           # a tensor indexed by a traced value
            h = (2.0 * h - fw.ones(2)) / sqrt(x.shape[1])       # a tensor constant, math.sqrt
            first, second = h.chunk(2, dim=1)                   # unpacking a traced value
            h = fw.cat([second, first], 1)
            h = fw.flatten(h.transpose(0, 1).contiguous(), 0) ** 2
            return -h * (h > 0.1).float() + self.shift.sum()
    return Idioms()


def test_trace_of_shape_arithmetic_constants_and_reflected_operators_as_torch():
    tm, km = make_idioms(torch), make_idioms(kiln)
    tg, kg = torch.fx.symbolic_trace(tm), kiln.fx.symbolic_trace(km)
    assert signature(kg.graph) == signature(tg.graph)
    assert kg.code == kiln_text(tg.code)
    assert "_tensor_constant0" in kg.code and "sqrt(" in kg.code
    x = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(to_np(kg(kiln.tensor(x))), to_np(tg(torch.tensor(x))),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(to_np(kg(kiln.tensor(x))), to_np(km(kiln.tensor(x))))


def test_graph_module_runs_like_the_module_and_like_torch():
    tm, km = make_net(torch), make_net(kiln)
    same_weights(km, tm)
    tg, kg = torch.fx.symbolic_trace(tm), kiln.fx.symbolic_trace(km)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    k_out, t_out, k_ref = kg(kiln.tensor(x), 3.0), tg(torch.tensor(x), 3.0), km(kiln.tensor(x),
                                                                              3.0)
    for k, t, r in ((k_out["out"], t_out["out"], k_ref["out"]),
                    (k_out["pair"][0], t_out["pair"][0], k_ref["pair"][0]),
                    (k_out["pair"][1], t_out["pair"][1], k_ref["pair"][1])):
        np.testing.assert_array_equal(to_np(k), to_np(r))
        np.testing.assert_allclose(to_np(k), to_np(t), rtol=1e-5, atol=1e-6)
    assert list(kg.state_dict()) == list(tg.state_dict())
    for key, value in kg.state_dict().items():
        assert value is km.state_dict()[key] or np.array_equal(to_np(value),
                                                               to_np(km.state_dict()[key]))


def make_ops(fw):
    class M(fw.nn.Module):
        def forward(self, x, y):
            return x + y, fw.add(x, y), x.add(y)
    return M()


def test_replace_add_with_mul_as_in_replace_op_example():
    results = {}
    for fw, fx in ((torch, torch.fx), (kiln, kiln.fx)):
        traced = fx.symbolic_trace(make_ops(fw))
        patterns = {operator.add, fw.add, "add"}
        for n in traced.graph.nodes:
            if any(n.target == p for p in patterns):
                with traced.graph.inserting_after(n):
                    new_node = traced.graph.call_function(fw.mul, n.args, n.kwargs)
                    n.replace_all_uses_with(new_node)
                traced.graph.erase_node(n)
        traced.recompile()
        traced.graph.lint()
        x, y = fw.tensor([1.0, 2.0, 3.0]), fw.tensor([4.0, 5.0, 6.0])
        results[fw.__name__] = (traced.code, [to_np(v) for v in traced(x, y)])
    assert results["kiln"][0] == kiln_text(results["torch"][0])
    for k, t in zip(results["kiln"][1], results["torch"][1]):
        np.testing.assert_array_equal(k, t)
        np.testing.assert_array_equal(k, [4.0, 10.0, 18.0])


def make_convnet(fw):
    nn = fw.nn

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 3, 3)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.conv2(self.conv1(x) - 0.1)).flatten(1)
    return ConvNet()


def relu_after_conv_transformer(fw, fx):
    class ReluAfterConv(fx.Transformer):
        def call_module(self, target, args, kwargs):
            out = super().call_module(target, args, kwargs)
            if isinstance(self.fetch_attr(target), fw.nn.Conv2d):
                return fw.relu(out)
            return out
    return ReluAfterConv


def test_transformer_inserts_a_relu_after_every_conv_as_torch_does():
    tm, km = make_convnet(torch), make_convnet(kiln)
    same_weights(km, tm)
    kilns_relu = kiln.relu
    t_new = relu_after_conv_transformer(torch, torch.fx)(torch.fx.symbolic_trace(tm)).transform()
    k_new = relu_after_conv_transformer(kiln, kiln.fx)(kiln.fx.symbolic_trace(km)).transform()
    assert k_new.code == kiln_text(t_new.code)
    assert "kiln.relu(conv1)" in k_new.code and "kiln.relu(conv2)" in k_new.code
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(to_np(k_new(kiln.tensor(x))), to_np(t_new(torch.tensor(x))),
                               rtol=1e-5, atol=1e-6)
    # the original module still runs unchanged (kiln.relu is kiln's own again)
    assert kiln.relu is kilns_relu
    np.testing.assert_allclose(to_np(km(kiln.tensor(x))), to_np(tm(torch.tensor(x))),
                               rtol=1e-5, atol=1e-6)


def make_relu_add(fw):
    class M(fw.nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = fw.nn.ReLU()

        def forward(self, x):
            return self.relu(x) + 1.0
    return M()


def inline_relu(fw, fx):
    """inline_function.py's pattern: swap the call_module node for the module traced inline."""
    m = fx.symbolic_trace(make_relu_add(fw))
    tracer = fx.proxy.GraphAppendingTracer(m.graph)
    for node in m.graph.nodes:
        if (node.op, node.target) == ("call_module", "relu"):
            with m.graph.inserting_before(node):
                proxy_args = fx.node.map_arg(node.args, lambda n: fx.Proxy(n, tracer))
                proxy_kwargs = fx.node.map_arg(node.kwargs, lambda n: fx.Proxy(n, tracer))
                proxy_output = m.relu(*proxy_args, **proxy_kwargs)
                node.replace_all_uses_with(proxy_output.node)
                m.graph.erase_node(node)
    m.recompile()
    return m


def test_inline_a_submodule_with_graph_appending_tracer():
    t, k = inline_relu(torch, torch.fx), inline_relu(kiln, kiln.fx)
    assert signature(k.graph) == signature(t.graph)
    assert k.code == kiln_text(t.code)
    assert "kiln.nn.functional.relu(x, inplace = False)" in k.code
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    np.testing.assert_array_equal(to_np(k(kiln.tensor(x))), to_np(t(torch.tensor(x))))
    import gc
    gc.collect()           # the appending tracer is gone: kiln's namespaces are their own again
    assert not hasattr(kiln.relu, "__fx_original__")


def test_graph_built_from_proxies_by_hand():
    """proxy_based_graph_creation.py's pattern, in both frameworks."""
    codes, values = [], []
    for fw, fx in ((torch, torch.fx), (kiln, kiln.fx)):
        graph = fx.Graph()
        tracer = fx.proxy.GraphAppendingTracer(graph)
        y, z = fx.Proxy(graph.placeholder("x"), tracer), fx.Proxy(graph.placeholder("y"), tracer)
        a = fw.cat([y, z])
        b = fw.tanh(a)
        c = fw.neg(b)
        fw.add(b, c)                # dead: removed below
        graph.output(c.node)
        assert graph.eliminate_dead_code()
        mod = fx.GraphModule(fw.nn.Module(), graph)
        codes.append(mod.code)
        values.append(to_np(mod(fw.tensor([0.5, -1.0]), fw.tensor([2.0]))))
    assert codes[1] == kiln_text(codes[0])
    np.testing.assert_allclose(values[1], values[0], rtol=1e-6)


def make_leafy(fw):
    nn = fw.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x).relu() + x

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.block(x)) * 2
    return Top(), Block


def custom_tracers(fx, fw, block_cls):
    class BlockLeaf(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, block_cls) or super().is_leaf_module(m, qualname)

    class LowerRelu(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            if isinstance(m, fw.nn.ReLU):
                return False
            return super().is_leaf_module(m, qualname)

    class Tagging(fx.Tracer):
        def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
            n = super().create_node(kind, target, args, kwargs, name)
            n.tag = "foo"
            return n
    return BlockLeaf, LowerRelu, Tagging


def test_custom_tracers_as_in_custom_tracer_example():
    (tm, tblock), (km, kblock) = make_leafy(torch), make_leafy(kiln)
    same_weights(km, tm)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    for t_tracer, k_tracer in zip(custom_tracers(torch.fx, torch, tblock),
                                  custom_tracers(kiln.fx, kiln, kblock)):
        tg, kg = t_tracer().trace(tm), k_tracer().trace(km)
        assert signature(kg) == signature(tg)
        assert str(kg) == kiln_text(str(tg))
        t_mod, k_mod = torch.fx.GraphModule(tm, tg), kiln.fx.GraphModule(km, kg)
        np.testing.assert_allclose(to_np(k_mod(kiln.tensor(x))), to_np(t_mod(torch.tensor(x))),
                                   rtol=1e-5, atol=1e-6)
    assert all(n.tag == "foo" for n in custom_tracers(kiln.fx, kiln, kblock)[2]().trace(km).nodes)


def make_rewrite_model(fw):
    class M(fw.nn.Module):
        def forward(self, x, w1, w2):
            val1 = fw.neg(w1)
            m1 = fw.cat([val1, w2]).sum()
            val2 = fw.neg(w1)
            m2 = fw.cat([val2, w2]).sum()
            return x + fw.max(m1) + fw.max(m2)

    def pattern(a1, a2):
        val1 = fw.neg(a1)
        return fw.cat([val1, a2]).sum()

    def replacement(w1, w2):
        return fw.stack([w1, w2])
    return M(), pattern, replacement


def test_replace_pattern_as_in_subgraph_rewriter_example():
    out = {}
    for fw, fx in ((torch, torch.fx), (kiln, kiln.fx)):
        model, pattern, replacement = make_rewrite_model(fw)
        traced = fx.symbolic_trace(model)
        matches = fx.replace_pattern(traced, pattern, replacement)
        traced.graph.lint()
        args = [fw.tensor([1.0, 2.0]), fw.tensor([3.0, -4.0]), fw.tensor([0.5, 6.0])]
        out[fw.__name__] = (traced.code, len(matches), to_np(traced(*args)),
                            [m.anchor.name for m in matches])
    assert out["kiln"][0] == kiln_text(out["torch"][0])
    assert out["kiln"][1] == out["torch"][1] == 2
    assert out["kiln"][3] == out["torch"][3]
    np.testing.assert_array_equal(out["kiln"][2], out["torch"][2])


@pytest.mark.parametrize("factory, shape", [(make_convnet, (2, 2, 6, 6)), (make_net, (5, 3))])
def test_shape_prop_fills_torch_tensor_meta(factory, shape):
    from torch.fx.passes.shape_prop import ShapeProp as TorchShapeProp
    from kiln.fx.passes.shape_prop import ShapeProp
    tm, km = factory(torch), factory(kiln)
    tg, kg = torch.fx.symbolic_trace(tm), kiln.fx.symbolic_trace(km)
    x = np.zeros(shape, np.float32)
    TorchShapeProp(tg).propagate(torch.tensor(x))
    ShapeProp(kg).propagate(kiln.tensor(x))
    assert kg.print_readable(False) == kiln_text(tg.print_readable(False))   # f32[2, 4, ...]
    for kn, tn in zip(kg.graph.nodes, tg.graph.nodes):
        tmeta, kmeta = tn.meta.get("tensor_meta"), kn.meta.get("tensor_meta")
        if isinstance(tmeta, dict):         # the output's dict of results
            tmeta, kmeta = tmeta["out"], kmeta["out"]
        assert (tmeta is None) == (kmeta is None), kn.name
        if tmeta is not None:
            assert tuple(kmeta.shape) == tuple(tmeta.shape)
            assert str(kmeta.dtype).split(".")[-1] == str(tmeta.dtype).split(".")[-1]
            assert kmeta.requires_grad == tmeta.requires_grad
            if factory is make_net:     # (kiln's conv2d writes channels-last results: not here)
                assert tuple(kmeta.stride) == tuple(tmeta.stride), kn.name


def test_graph_module_trains_like_the_original_module():
    tm = make_net(torch)
    km, reference = make_net(kiln), make_net(kiln)
    same_weights(km, tm)
    same_weights(reference, tm)
    gm = kiln.fx.symbolic_trace(km)
    rng = np.random.default_rng(3)
    data = [(rng.standard_normal((4, 3)).astype(np.float32),
             rng.standard_normal((4, 3)).astype(np.float32)) for _ in range(3)]
    losses = []
    for model in (gm, reference):
        opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        trace = []
        for x, y in data:
            out = model(kiln.tensor(x))
            loss = ((out["out"] - kiln.tensor(y)) ** 2).mean() + out["pair"][0].sum() * 0.01
            opt.zero_grad()
            loss.backward()
            opt.step()
            trace.append(loss.item())
        losses.append(trace)
    assert losses[0] == losses[1]
    for (name, p), q in zip(gm.named_parameters(), reference.parameters()):
        np.testing.assert_array_equal(to_np(p), to_np(q), err_msg=name)
    assert not np.array_equal(to_np(reference.lin.weight), tm.lin.weight.detach().numpy())


def test_compiled_graph_module_equals_eager():
    km = make_convnet(kiln)
    gm = kiln.fx.symbolic_trace(km)
    compiled = kiln.compile(gm)
    x = kiln.tensor(np.random.default_rng(4).standard_normal((2, 2, 6, 6)).astype(np.float32))
    np.testing.assert_allclose(to_np(compiled(x)), to_np(km(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(compiled(x)), to_np(km(x)), rtol=1e-5, atol=1e-6)
    assert "graphs: 1   graph breaks: 0" in str(kiln.compiler.explain(compiled, x))


def make_controlled(fw):
    class M(fw.nn.Module):
        def forward(self, x, flag, k: int = 3):
            y = _helper_scale(x, k)
            return y * 2 if flag else y - 1
    return M()


def test_concrete_args_and_wrap():
    x = np.array([[1.0, -2.0]], np.float32)
    for flag in (True, False):
        t = torch.fx.symbolic_trace(make_controlled(torch), concrete_args={"flag": flag})
        k = kiln.fx.symbolic_trace(make_controlled(kiln), concrete_args={"flag": flag})
        names = [(n.op, n.name, n.target if isinstance(n.target, str) else n.target.__name__)
                 for n in k.graph.nodes]
        assert ("call_function", "_helper_scale", "_helper_scale") in names
        assert names == [(n.op, n.name, n.target if isinstance(n.target, str) else
                          n.target.__name__) for n in t.graph.nodes]
        own_assert = ("kiln._assert", "kiln.fx._symbolic_trace._assert")   # kiln has none
        assert k.code == kiln_text(t.code).replace(*own_assert)
        assert str(k.graph) == kiln_text(str(t.graph)).replace(*own_assert)
        assert 'wrap("' in k.code
        np.testing.assert_array_equal(to_np(k(kiln.tensor(x), flag, 3)),
                                      to_np(t(torch.tensor(x), flag, 3)))
        with pytest.raises(AssertionError, match="flag has been specialized to have value"):
            k(kiln.tensor(x), not flag, 3)


def test_control_flow_and_len_on_proxies_raise_torch_errors():
    def branch(x):
        if x.sum() > 0:
            return x
        return -x

    def length(x):
        return x * len(x)
    with pytest.raises(kiln.fx.TraceError, match="control flow"):
        kiln.fx.symbolic_trace(branch)
    with pytest.raises(RuntimeError, match="'len' is not supported in symbolic tracing"):
        kiln.fx.symbolic_trace(length)
    assert not hasattr(kiln.sum, "__fx_original__")          # patches undone after an error
    assert issubclass(kiln.fx.TraceError, ValueError)


def test_interpreter_override_and_graph_editing_api():
    class NegateSigmoid(kiln.fx.Interpreter):
        def call_function(self, target, args, kwargs):
            if target is kiln.sigmoid:
                return -kiln.sigmoid(*args, **kwargs)
            return super().call_function(target, args, kwargs)

    class TorchNegateSigmoid(torch.fx.Interpreter):
        def call_function(self, target, args, kwargs):
            if target is torch.sigmoid:
                return -torch.sigmoid(*args, **kwargs)
            return super().call_function(target, args, kwargs)
    tm, km = make_net(torch), make_net(kiln)
    same_weights(km, tm)
    x = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    k_out = NegateSigmoid(kiln.fx.symbolic_trace(km)).run(kiln.tensor(x))
    t_out = TorchNegateSigmoid(torch.fx.symbolic_trace(tm)).run(torch.tensor(x))
    np.testing.assert_allclose(to_np(k_out["pair"][0]), to_np(t_out["pair"][0]), rtol=1e-5)
    assert (to_np(k_out["pair"][0]) < 0).all()

    g = kiln.fx.symbolic_trace(km).graph
    relu = next(n for n in g.nodes if n.target == "relu")
    with pytest.raises(RuntimeError, match="still had 1 users"):
        g.erase_node(relu)
    copy = kiln.fx.Graph()
    out = copy.graph_copy(g, {})
    copy.output(out)
    copy.lint()
    assert [n.name for n in copy.nodes] == [n.name for n in g.nodes]
    moved = copy.find_nodes(op="call_method", target="neg")[0]
    first = next(iter(copy.nodes))
    first.prepend(moved)                     # used before its input is defined
    with pytest.raises(RuntimeError, match="used before it has been defined"):
        copy.lint()
    other = kiln.fx.Graph()
    other.output(other.call_function(kiln.neg, (relu,)))      # relu is g's node
    with pytest.raises(RuntimeError, match="does not belong to this Graph"):
        other.lint()


def test_print_tabular_needs_tabulate(capsys):
    g = kiln.fx.symbolic_trace(make_ops(kiln)).graph
    try:
        import tabulate  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            g.print_tabular()
        assert "pip install tabulate" in capsys.readouterr().out
    else:
        g.print_tabular()
        assert "call_method" in capsys.readouterr().out


def test_has_side_effect_and_proxyable_class_meta_as_torch():
    results = []
    for fw, fx in ((torch, torch.fx), (kiln, kiln.fx)):
        logged = fx.has_side_effect(lambda x: None)

        class Pair(metaclass=fx.ProxyableClassMeta):
            def __init__(self, a, b):
                self.a, self.b = a, b

        def fn(x):
            logged(x)                      # its value is unused, but it must stay
            pair = Pair(x, x * 2)
            unused = x - 1                 # noqa: F841  (dead: eliminated)
            return pair

        gm = fx.symbolic_trace(fn)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        kinds = [(n.op, getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes]
        out = gm(fw.tensor([1.0, 3.0]))
        results.append((kinds, type(out).__name__, to_np(out.b)))
    assert results[0][0] == results[1][0]
    assert ("call_function", "Pair") in results[1][0] and ("call_function", "sub") not in \
        results[1][0]
    assert results[0][1] == results[1][1] == "Pair"
    np.testing.assert_array_equal(results[0][2], results[1][2])


def make_conv_bn(fw):
    nn = fw.nn

    class ConvBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))

        def forward(self, x):
            return self.head(fw.relu(self.bn(self.conv(x))))
    return ConvBN()


def fuse_conv_bn(fw, fx, model):
    """The fx conv-bn fusion tutorial's pass, written once against either framework: each
    BatchNorm2d that follows a Conv2d is folded into the conv's weights and removed."""
    import copy
    model = copy.deepcopy(model).eval()
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], fw.nn.BatchNorm2d):
            continue
        conv_node = node.args[0]
        if conv_node.op != "call_module" or len(conv_node.users) > 1:
            continue
        conv, bn = modules[conv_node.target], modules[node.target]
        scale = bn.weight / fw.sqrt(bn.running_var + bn.eps)
        fused = copy.deepcopy(conv)
        fused.weight = fw.nn.Parameter((conv.weight * scale.reshape(-1, 1, 1, 1)).detach())
        bias = conv.bias if conv.bias is not None else fw.zeros_like(bn.running_mean)
        fused.bias = fw.nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach())
        parent, _, name = conv_node.target.rpartition(".")
        setattr(modules[parent] if parent else gm, name, fused)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def test_conv_bn_fusion_pass_as_torch():
    tm, km = make_conv_bn(torch), make_conv_bn(kiln)
    rng = np.random.default_rng(6)
    for name, value in tm.state_dict().items():        # non-trivial BatchNorm statistics
        if value.dtype == torch.float32:
            value.copy_(torch.tensor(rng.uniform(0.5, 1.5, tuple(value.shape)).astype(np.float32)))
    same_weights(km, tm)
    t_fused, k_fused = fuse_conv_bn(torch, torch.fx, tm), fuse_conv_bn(kiln, kiln.fx, km)
    assert k_fused.code == kiln_text(t_fused.code)
    assert [n for n, _ in k_fused.named_modules()] == [n for n, _ in t_fused.named_modules()]
    assert list(k_fused.state_dict()) == list(t_fused.state_dict())
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    k_out = to_np(k_fused(kiln.tensor(x)))
    np.testing.assert_allclose(k_out, to_np(t_fused(torch.tensor(x))), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(k_out, to_np(km.eval()(kiln.tensor(x))), rtol=1e-4, atol=1e-5)
    assert isinstance(km.bn, kiln.nn.BatchNorm2d)       # the original model is untouched


def test_functions_kiln_resolves_on_use_record_nodes():
    """`torch.conv2d` is nn.functional's in kiln, looked up on each use (kiln.__getattr__):
    while tracing it too records one call_function node."""
    def fn_of(fw):
        return lambda x, w: fw.conv2d(x, w, padding=1).relu()
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((1, 2, 5, 5)).astype(np.float32), \
        rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    t, k = torch.fx.symbolic_trace(fn_of(torch)), kiln.fx.symbolic_trace(fn_of(kiln))
    assert [(n.op, n.name) for n in k.graph.nodes] == [(n.op, n.name) for n in t.graph.nodes]
    np.testing.assert_allclose(to_np(k(kiln.tensor(x), kiln.tensor(w))),
                               to_np(t(torch.tensor(x), torch.tensor(w))), rtol=1e-5, atol=1e-5)
    assert "conv2d" not in vars(kiln)                   # the namespace is kiln's own again


def test_print_readable_as_torch_and_to_folder_rebuilds_the_module(tmp_path):
    import importlib.util
    tm, km = make_conv_bn(torch), make_conv_bn(kiln)
    same_weights(km, tm)
    t, k = torch.fx.symbolic_trace(tm), kiln.fx.symbolic_trace(km)
    assert k.print_readable(False) == kiln_text(t.print_readable(False))
    k.to_folder(tmp_path / "saved", "Rebuilt")
    spec = importlib.util.spec_from_file_location("saved_fx_module",
                                                  tmp_path / "saved" / "module.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.Rebuilt()
    assert list(rebuilt.state_dict()) == list(k.state_dict())
    x = kiln.tensor(np.random.default_rng(9).standard_normal((2, 3, 5, 5)).astype(np.float32))
    np.testing.assert_array_equal(to_np(rebuilt(x)), to_np(k(x)))


def test_a_trace_inside_a_traced_forward_records_into_its_own_graph():
    def make(fw, fx):
        class Inner(fw.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = fw.nn.Linear(2, 2)

            def forward(self, x):
                return self.lin(x) * 2

        class Outer(fw.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = Inner()

            def forward(self, x):
                self.inner_code = fx.symbolic_trace(self.inner).code
                return self.inner(x) + 1
        return Outer()
    t, k = make(torch, torch.fx), make(kiln, kiln.fx)
    t_gm, k_gm = torch.fx.symbolic_trace(t), kiln.fx.symbolic_trace(k)
    assert k_gm.code == kiln_text(t_gm.code)
    assert k.inner_code == kiln_text(t.inner_code)


def test_varargs_and_kwargs_forwards_as_torch():
    def make(fw):
        class Star(fw.nn.Module):
            def forward(self, x, *rest, scale=2.0, **named):
                return x * scale + rest[0] - named["shift"]
        return Star()
    t, k = torch.fx.symbolic_trace(make(torch)), kiln.fx.symbolic_trace(make(kiln))
    assert str(k.graph) == kiln_text(str(t.graph))
    assert k.code == kiln_text(t.code)
    values = [np.array([1.0, -2.0], np.float32), np.array([0.5, 0.25], np.float32), 3.0]
    np.testing.assert_array_equal(
        to_np(k(kiln.tensor(values[0]), 1.5, kiln.tensor(values[1]), shift=values[2])),
        to_np(t(torch.tensor(values[0]), 1.5, torch.tensor(values[1]), shift=values[2])))


def test_devices_dtypes_and_infinities_in_generated_code():
    def fn_of(fw):
        return lambda x: x.to(fw.device("cpu")).to(fw.float64).clamp(-float("inf"), 1.5)
    t, k = torch.fx.symbolic_trace(fn_of(torch)), kiln.fx.symbolic_trace(fn_of(kiln))
    # kiln.device takes the device string only (torch's repr spells type=)
    assert k.code == kiln_text(t.code).replace("device(type='cpu')", "device('cpu')")
    x = np.array([-1.0, 2.0], np.float32)
    k_out, t_out = k(kiln.tensor(x)), t(torch.tensor(x))
    assert str(k_out.dtype) == "kiln.float64" and str(t_out.dtype) == "torch.float64"
    np.testing.assert_array_equal(to_np(k_out), to_np(t_out))


def test_pickled_graph_module_is_traced_again_as_torch_does():
    import pickle
    tm, km = make_net(torch), make_net(kiln)
    same_weights(km, tm)
    t = torch.fx.symbolic_trace(tm)
    k = kiln.fx.symbolic_trace(km)
    k.graph.eliminate_dead_code()
    t2, k2 = pickle.loads(pickle.dumps(t)), pickle.loads(pickle.dumps(k))
    assert k2.code == kiln_text(t2.code) == k.code
    assert type(k2).__name__ == "Net" and list(k2.state_dict()) == list(k.state_dict())
    x = np.random.default_rng(10).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(to_np(k2(kiln.tensor(x))["out"]), to_np(k(kiln.tensor(x))["out"]))
    np.testing.assert_allclose(to_np(k2(kiln.tensor(x))["out"]),
                               to_np(t2(torch.tensor(x))["out"]), rtol=1e-5, atol=1e-6)
    specialized = kiln.fx.symbolic_trace(make_controlled(kiln), concrete_args={"flag": True})
    again = pickle.loads(pickle.dumps(specialized))
    assert again.code == specialized.code                  # wrap() and the _assert survive
    with pytest.raises(AssertionError, match="flag has been specialized"):
        again(kiln.tensor(x), False, 3)


def _passes_through(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


def test_a_decorated_function_is_traced_with_the_wrapped_functions_parameters():
    def fn_of(fw):
        @_passes_through
        def scaled_sum(x, y, k=2.0):
            return fw.relu(x) + y * k
        return scaled_sum
    t, k = torch.fx.symbolic_trace(fn_of(torch)), kiln.fx.symbolic_trace(fn_of(kiln))
    assert k.code == kiln_text(t.code)
    assert [n.target for n in k.graph.nodes if n.op == "placeholder"] == ["x", "y", "k"]
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(to_np(k(kiln.tensor(x), kiln.tensor(x))),
                                  to_np(t(torch.tensor(x), torch.tensor(x))))


@pytest.mark.parametrize("alias", ["multiply", "divide", "subtract", "absolute", "negative",
                                   "arcsin", "arccos", "clip", "true_divide"])
def test_an_alias_prints_as_a_kiln_function_and_computes_as_torchs(alias):
    """kiln.multiply is kiln.mul (out= and all), so the generated code names a kiln function,
    never a private module path; the value equals torch's."""
    def fn_of(lib):             # the function is looked up when called, as user code does
        if alias == "clip":
            return lambda x: getattr(lib, alias)(x, -0.5, 0.5)
        if alias in ("multiply", "divide", "subtract", "true_divide"):
            return lambda x: getattr(lib, alias)(x, x + 2)
        return lambda x: getattr(lib, alias)(x)
    k = kiln.fx.symbolic_trace(fn_of(kiln))
    call = k.code.strip().splitlines()[-2]            # the alias's line, before `return`
    assert " = kiln." in call and "kiln_" not in k.code, k.code
    x = np.array([-0.75, 0.25, 0.5], np.float32)
    t = torch.fx.symbolic_trace(fn_of(torch))
    np.testing.assert_allclose(to_np(k(kiln.tensor(x))), to_np(t(torch.tensor(x))), rtol=1e-6)


def test_aliases_take_out_as_torchs():
    for lib in (kiln, torch):
        x = lib.tensor([1.0, 2.0])
        out = lib.empty(2)
        lib.multiply(x, x, out=out)
        assert out.tolist() == [1.0, 4.0]


def test_experimental_optimization_fuse_folds_batch_norms_as_torch():
    """torch.fx.experimental.optimization.fuse: each BatchNorm fed only by a Conv2d or Linear
    (and tracking running statistics) folds into it; a conv whose output is also read
    elsewhere and a BatchNorm without running statistics stay. The fused GraphModule has
    torch's modules and computes torch's fused outputs."""
    import torch.fx.experimental.optimization as torch_opt
    import kiln.fx.experimental.optimization as kiln_opt

    def build(lib):
        nn = lib.nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
                self.bn1 = nn.BatchNorm2d(4)
                self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
                self.bn2 = nn.BatchNorm2d(4)
                self.bn3 = nn.BatchNorm2d(4, track_running_stats=False)
                self.fc = nn.Linear(16, 6)
                self.bn4 = nn.BatchNorm1d(6)

            def forward(self, x):
                x = lib.relu(self.bn1(self.conv1(x)))
                y = self.conv2(x)
                x = self.bn2(y) + y                   # conv2's output read twice: kept
                x = self.bn3(x)
                x = lib.flatten(lib.nn.functional.adaptive_avg_pool2d(x, 2), 1)
                return self.bn4(self.fc(x))
        return Net()

    torch.manual_seed(0)
    ref = build(torch)
    ref(torch.randn(8, 3, 6, 6))                      # running statistics of their own
    ours = build(kiln)
    ours.load_state_dict({k: kiln.tensor(v.numpy()) for k, v in ref.state_dict().items()})
    ref.eval(), ours.eval()
    fused_ref, fused = torch_opt.fuse(ref), kiln_opt.fuse(ours)
    assert isinstance(fused, kiln.fx.GraphModule)
    names = lambda m: [(n, type(c).__name__) for n, c in m.named_modules()]  # noqa: E731
    assert names(fused) == names(fused_ref)
    assert [n for n, _ in names(fused)] == ["", "conv1", "conv2", "bn2", "bn3", "fc"]
    assert any(isinstance(m, kiln.nn.BatchNorm2d) for m in ours.modules())   # a copy fused
    x = np.random.default_rng(1).standard_normal((5, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(fused(kiln.tensor(x)).detach().numpy(),
                               fused_ref(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused(kiln.tensor(x)).detach().numpy(),
                               ours(kiln.tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="Fusion only for eval"):
        kiln_opt.fuse(ours.train())
