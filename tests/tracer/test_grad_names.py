"""grad_fn names of composite ops read as PyTorch's (MeanBackward0, not DivBackward0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln

X = np.random.default_rng(0).normal(size=(3, 4))
TARGET = np.array([0, 3, 1])

CALLS = [
    ("mean", lambda t, F, x: x.mean()),
    ("mean dim", lambda t, F, x: t.mean(x, 1)),
    ("sum", lambda t, F, x: x.sum()),
    ("softmax", lambda t, F, x: x.softmax(1)),
    ("log_softmax", lambda t, F, x: F.log_softmax(x, 1)),
    # softmin calls softmax inside its family module: the name reaches callers there too
    ("softmin", lambda t, F, x: F.softmin(x, 1)),
    ("var std", lambda t, F, x: x.var() + 0 * x.std()),
    ("logsumexp", lambda t, F, x: t.logsumexp(x, 1)),
    ("cross_entropy", lambda t, F, x: F.cross_entropy(x, t.tensor(TARGET))),
    ("nll_loss", lambda t, F, x: F.nll_loss(x, t.tensor(TARGET))),
    ("CrossEntropyLoss", lambda t, F, x: t.nn.CrossEntropyLoss()(x, t.tensor(TARGET))),
    ("mse_loss", lambda t, F, x: F.mse_loss(x, x.detach() * 2)),
    ("l1_loss", lambda t, F, x: F.l1_loss(x, x.detach() * 2)),
    ("bce", lambda t, F, x: F.binary_cross_entropy(x.sigmoid(), (x.detach() > 0).double())),
    ("bce with logits", lambda t, F, x: F.binary_cross_entropy_with_logits(
        x, (x.detach() > 0).double())),
    ("smooth_l1", lambda t, F, x: F.smooth_l1_loss(x, x.detach() * 0)),
    ("gelu silu", lambda t, F, x: F.gelu(x)),
    ("silu", lambda t, F, x: F.silu(x)),
    ("leaky_relu", lambda t, F, x: F.leaky_relu(x)),
    ("elu", lambda t, F, x: F.elu(x)),
    ("softplus", lambda t, F, x: F.softplus(x)),
    ("layer_norm", lambda t, F, x: F.layer_norm(x, (4,))),
    ("relu sigmoid tanh", lambda t, F, x: x.relu()),
    ("exp", lambda t, F, x: x.exp()),
    # introyt tensors tutorial: b = a.clone() prints grad_fn=<CloneBackward0>
    ("clone", lambda t, F, x: x.clone()),
    ("torch.clone", lambda t, F, x: t.clone(x * 2)),
    # autogradqs tutorial: (inp + 1).pow(2) is PowBackward0 (kiln's multiply said MulBackward0)
    ("x ** 2", lambda t, F, x: x ** 2),
    ("pow 2", lambda t, F, x: (x + 1).pow(2)),
    ("torch.pow", lambda t, F, x: t.pow(x, 3)),
    ("pow tensor", lambda t, F, x: x.pow(x.detach())),
    ("rpow", lambda t, F, x: 2 ** x),
    ("square", lambda t, F, x: x.square()),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in CALLS])
def test_grad_fn_name_matches_torch(call) -> None:
    t = call(torch, torch.nn.functional, torch.tensor(X, requires_grad=True))
    k = call(kiln, kiln.nn.functional, kiln.tensor(X, requires_grad=True))
    assert k.grad_fn.name() == t.grad_fn.name()
    assert type(k.grad_fn).__name__ == type(t.grad_fn).__name__
    assert repr(k.grad_fn).startswith(f"<{t.grad_fn.name()} object at")


def test_names_do_not_change_gradients() -> None:
    x = kiln.tensor(X, requires_grad=True)
    kiln.nn.functional.cross_entropy(x, kiln.tensor(TARGET)).backward()
    xt = torch.tensor(X, requires_grad=True)
    torch.nn.functional.cross_entropy(xt, torch.tensor(TARGET)).backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12)


def _structure(node):
    return (type(node).__name__, node.name(),
            [None if f is None else (type(f).__name__, f.name()) for f, _ in node.next_functions])


M = np.random.default_rng(2).normal(size=(4, 5))
B = np.random.default_rng(3).normal(size=(2, 4, 5))
STRUCTURES = [
    ("softmax", lambda t, F, x: x.softmax(-1)),
    ("log_softmax", lambda t, F, x: x.log_softmax(-1)),
    ("F.softmax", lambda t, F, x: F.softmax(x, dim=1)),
    ("F.log_softmax of a result", lambda t, F, x: F.log_softmax(x * 2, dim=0)),
    ("mm", lambda t, F, x: x @ t.tensor(M, requires_grad=True)),
    ("bmm", lambda t, F, x: t.bmm(x.expand(2, 3, 4), t.tensor(B, requires_grad=True))),
    ("view", lambda t, F, x: x.view(2, 6)),
    ("flatten", lambda t, F, x: x.flatten()),
    ("unfold", lambda t, F, x: x.unfold(1, 2, 1)),
    # kiln's x * x: one input listed, as PyTorch's PowBackward0 has it
    ("pow 2", lambda t, F, x: x.pow(2)), ("** 2", lambda t, F, x: (x * 3) ** 2),
    ("square", lambda t, F, x: t.square(x)),
    ("pow tensor", lambda t, F, x: x.pow(t.tensor(M[:3, :4], requires_grad=True))),
    ("rpow", lambda t, F, x: 2 ** x),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in STRUCTURES])
def test_next_functions_match_torchs_structure(call) -> None:
    """The node's name and its next_functions (names and count; a fused node's saved values
    are not inputs), before and after backward frees the node's saved values."""
    seen = []
    for lib in (torch, kiln):
        y = call(lib, lib.nn.functional, lib.tensor(X, requires_grad=True))
        before = _structure(y.grad_fn)
        y.sum().backward()
        seen.append((before, _structure(y.grad_fn)))
    assert seen[1] == seen[0]


SHAPE_OPS = [
    ("t", lambda x: x[0].t()), ("transpose", lambda x: x.transpose(0, 2)),
    ("swapaxes", lambda x: x.swapaxes(1, 2)), ("mT", lambda x: x.mT),
    ("unsqueeze", lambda x: x.unsqueeze(1)), ("squeeze", lambda x: x.squeeze()),
    ("squeeze dim", lambda x: x.squeeze(1)), ("squeeze dims", lambda x: x.squeeze((1,))),
    ("squeeze a dim > 1", lambda x: x.squeeze(0)), ("sum dim", lambda x: x.sum(1)),
    ("sum dims", lambda x: x.sum((0, 2))), ("sum", lambda x: x.sum()),
    ("flatten", lambda x: x.flatten(1)),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in SHAPE_OPS])
def test_shape_ops_name_their_nodes_as_torch(call) -> None:
    data = np.random.default_rng(4).normal(size=(3, 1, 4))
    names = [call(lib.tensor(data, requires_grad=True)).grad_fn.name() for lib in (torch, kiln)]
    assert names[1] == names[0]


def test_reflected_add_and_mul_keep_the_tensor_first_in_next_functions():
    """`2 * b` and `1 + b` are b.mul(2) and b.add(1) in torch: the autograd tutorial walks
    d.grad_fn.next_functions[0][0]... from d = 2 * sin(a) + 1 down to a's AccumulateGrad."""
    import math

    def chain(lib):
        a = lib.linspace(0.0, 2 * math.pi, steps=5, requires_grad=True)
        d = 1 + 2 * lib.sin(a)
        def name(node):
            return None if node is None else node.name().replace("torch::autograd::", "")
        def walk():
            names, node = [], d.grad_fn
            while node is not None:
                names.append((name(node), [name(f) for f, _ in node.next_functions]))
                node = node.next_functions[0][0] if node.next_functions else None
            return names
        before = walk()
        d.sum().backward()
        return before, walk(), a.grad.tolist()     # the graph's shape outlives backward
    k, t = chain(kiln), chain(torch)
    assert k[:2] == t[:2]
    np.testing.assert_allclose(k[2], t[2], rtol=1e-6, atol=1e-6)


LAYER_CALLS = [
    # introyt Building Models tutorial: print(lin(x)) shows grad_fn=<AddmmBackward0>
    ("Linear", lambda t, x: t.nn.Linear(4, 3)(x)),
    ("Linear no bias", lambda t, x: t.nn.Linear(4, 3, bias=False)(x)),
    ("linear 1-d", lambda t, x: t.nn.functional.linear(x[0], t.ones(3, 4), t.ones(3))),
    ("linear 1-d no bias", lambda t, x: t.nn.functional.linear(x[0], t.ones(3, 4))),
    ("linear 3-d", lambda t, x: t.nn.functional.linear(x.reshape(1, 3, 4), t.ones(3, 4),
                                                       bias=t.ones(3))),
    ("linear 3-d no bias", lambda t, x: t.nn.functional.linear(x.reshape(3, 1, 4),
                                                               t.ones(2, 4))),
    ("BatchNorm1d", lambda t, x: t.nn.BatchNorm1d(4)(x)),
    ("BatchNorm1d eval", lambda t, x: t.nn.BatchNorm1d(4).eval()(x)),
    ("Conv2d", lambda t, x: t.nn.Conv2d(1, 2, 2)(x.reshape(1, 1, 3, 4))),
    ("Conv1d no bias", lambda t, x: t.nn.Conv1d(3, 2, 2, bias=False)(x.unsqueeze(0))),
    ("ConvTranspose2d", lambda t, x: t.nn.ConvTranspose2d(1, 2, 2)(x.reshape(1, 1, 3, 4))),
    ("MaxPool2d", lambda t, x: t.nn.MaxPool2d(2)(x.reshape(1, 1, 3, 4))),
    ("AvgPool2d", lambda t, x: t.nn.AvgPool2d(2)(x.reshape(1, 1, 3, 4))),
    ("Embedding", lambda t, x: t.nn.Embedding(5, 2)(t.tensor([1, 4]))),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in LAYER_CALLS])
def test_layer_output_grad_fn_names_match_torch(call) -> None:
    x = X.astype(np.float32)
    t = call(torch, torch.tensor(x, requires_grad=True))
    k = call(kiln, kiln.tensor(x, requires_grad=True))
    assert k.grad_fn.name() == t.grad_fn.name()


def _graph_walk(lib) -> list[str]:
    """Every node name met walking `next_functions` from four losses, depth first."""
    nn, F = lib.nn, lib.nn.functional
    lib.manual_seed(0)
    seen = []

    def walk(fn, depth=0):
        if fn is None:
            seen.append("  " * depth + "None")
            return
        seen.append("  " * depth + type(fn).__name__)
        for f, _ in fn.next_functions:
            walk(f, depth + 1)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))      # the 60-minute blitz
    walk(nn.MSELoss()(net(lib.randn(1, 4)), lib.randn(1, 2)).grad_fn)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(8, 3))
    walk(F.cross_entropy(cnn(lib.randn(2, 1, 6, 6)), lib.tensor([0, 2])).grad_fn)
    x = lib.randn(2, 3, requires_grad=True)
    walk(F.layer_norm(F.gelu(x).softmax(-1), (3,)).mean().grad_fn)
    emb = nn.Embedding(5, 3)
    walk(F.nll_loss(F.log_softmax(emb(lib.tensor([1, 2])), 1), lib.tensor([0, 1])).grad_fn)
    return seen


def test_walking_next_functions_meets_torchs_nodes():
    """A composite's node lists its own inputs, as PyTorch's single node does (Linear's
    AddmmBackward0: bias, input, weight.t()), so the blitz tutorial's
    loss.grad_fn.next_functions[0][0] is the last Linear's node, as in PyTorch."""
    assert _graph_walk(kiln) == _graph_walk(torch)


NAMED_REDUCTIONS = ["x.clamp(0, 1)", "x.clamp(min=0)", "lib.clamp(x, lib.zeros(3), lib.ones(3))",
                    "x.clamp_min(0)", "x.clip(0, 1)", "x.max()", "x.min()", "lib.max(x)",
                    "lib.max(x, x * 2)", "x.amax()", "x.amin(1)", "x.norm()", "x.norm(dim=1)",
                    "lib.norm(x)", "lib.stack([x, x * 2])"]


@pytest.mark.parametrize("expr", NAMED_REDUCTIONS)
def test_clamp_extremes_norm_and_stack_nodes_are_torchs(expr):
    def node(lib):
        x = lib.randn(2, 3, requires_grad=True)     # noqa: F841  (read by the expression)
        g = eval(expr).grad_fn
        return g.name(), [f.name().replace("torch::autograd::", "") if f is not None else None
                          for f, _ in g.next_functions]
    assert node(kiln) == node(torch)


class _Twice:
    """A custom Function, defined for either library (its node is `TwiceBackward`)."""

    @staticmethod
    def make(lib):
        class Twice(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, g):
                return g * 2
        return Twice


def _node_classes(lib) -> list:
    """Per node: its class's name, whether it is a graph.Node, and whether another node of the
    same op has the same class."""
    Node = lib.autograd.graph.Node
    x = lib.tensor(X, requires_grad=True)
    m = lib.tensor(M, requires_grad=True)
    outs = [x.sum(), x.sum(0), x * 2, x @ m, lib.bmm(x.expand(2, 3, 4), m.expand(2, 4, 5)),
            x.view(12),
            x.mean(), x.mean(1), lib.relu(x), x.exp(), lib.nn.functional.linear(x, m.t()),
            _Twice.make(lib).apply(x)]
    again = [x.sum(), x.sum(1), x * 3]
    acc = outs[0].grad_fn.next_functions[0][0]
    return ([(type(o.grad_fn).__name__, isinstance(o.grad_fn, Node)) for o in outs]
            + [type(a.grad_fn) is type(b.grad_fn) for a, b in zip(again, outs)]
            + [(type(acc).__name__, isinstance(acc, Node), acc.variable is x)])


def test_node_classes_are_named_as_torchs():
    """`type(grad_fn).__name__` is PyTorch's node name (users dispatch on it), one class per
    name, each a graph.Node; a leaf's AccumulateGrad and a custom Function's node too."""
    assert _node_classes(kiln) == _node_classes(torch)


def test_custom_function_node_class_is_its_backward_cls():
    for lib in (torch, kiln):
        Twice = _Twice.make(lib)
        y = Twice.apply(lib.tensor(X, requires_grad=True))
        assert type(y.grad_fn) is Twice._backward_cls
        assert type(y.grad_fn).__name__ == y.grad_fn.name() == "TwiceBackward"


def test_hooks_on_named_nodes_still_run():
    """A non-leaf's tensor hook (kept on its node) runs after the node's class was renamed by
    a composite (mean) and by a primitive's own name (mul), with the gradients torch gives."""
    seen = {}
    for lib in (torch, kiln):
        x = lib.tensor(X, requires_grad=True)
        y = x * 3
        z = y.mean()
        got = []
        y.register_hook(lambda g: got.append(g.sum().item()) or g * 2)
        z.register_hook(lambda g: got.append(g.item()))
        z.backward()
        seen[lib] = (type(z.grad_fn).__name__, got, x.grad.tolist())
    assert seen[kiln][0] == seen[torch][0]
    np.testing.assert_allclose(seen[kiln][1], seen[torch][1], rtol=1e-12)
    np.testing.assert_allclose(seen[kiln][2], seen[torch][2], rtol=1e-12)


def test_node_prehooks_replace_the_gradient_as_torchs():
    """grad_fn.register_prehook(fn): fn(grad_outputs) before the node's rule, its tuple
    replacing them; on a named node, a renamed one and a custom Function's; remove() drops it."""
    def run(lib):
        x = lib.tensor(X, requires_grad=True)
        h = x * 3
        y = _Twice.make(lib).apply(h)
        z = y.mean()
        seen = []
        y.grad_fn.register_prehook(lambda go: seen.append(type(go).__name__) or (go[0] + 1,))
        z.grad_fn.register_prehook(lambda go: (go[0] * 10,))
        dropped = h.grad_fn.register_prehook(lambda go: (go[0] * 0,))
        dropped.remove()
        z.backward()
        return seen, x.grad.numpy()
    (k_seen, k_grad), (t_seen, t_grad) = run(kiln), run(torch)
    assert k_seen == t_seen
    np.testing.assert_allclose(k_grad, t_grad, rtol=1e-12)


def _values(grads) -> list:
    """A hook's gradient tuple as plain values (None kept)."""
    return [None if g is None else np.asarray(g.detach().numpy()).round(12).tolist()
            for g in grads]


def test_node_post_hooks_see_and_replace_grad_inputs_as_torchs():
    """grad_fn.register_hook(fn) is a post hook: fn(grad_inputs, grad_outputs), one entry per
    next_functions (None for an input without a gradient); a tuple it returns replaces
    grad_inputs, and the next hook sees the replacement; remove() drops one."""
    def run(lib):
        x = lib.tensor(X, requires_grad=True)
        w = lib.tensor(M[:3, :4], requires_grad=True)
        c = lib.tensor(M[1:, 1:])
        log = []
        y = x * c                       # c takes no gradient: None in grad_inputs
        z = (y * w).sum()
        y.grad_fn.register_hook(lambda gi, go: log.append(("y", _values(gi), _values(go))))
        first = z.grad_fn.register_hook(
            lambda gi, go: log.append(("z1", type(gi).__name__, _values(gi))))
        z.grad_fn.register_hook(lambda gi, go: log.append(("z2", _values(gi))))
        mul = z.grad_fn.next_functions[0][0]
        mul.register_hook(lambda gi, go: (gi[0] * 10, gi[1] + 1))
        dropped = mul.register_hook(lambda gi, go: (gi[0] * 0, gi[1]))
        dropped.remove()
        first.remove()
        z.backward()
        return log, x.grad.numpy(), w.grad.numpy()
    (k_log, k_x, k_w), (t_log, t_x, t_w) = run(kiln), run(torch)
    assert k_log == t_log
    np.testing.assert_allclose(k_x, t_x, rtol=1e-12)
    np.testing.assert_allclose(k_w, t_w, rtol=1e-12)


def test_node_hooks_run_in_torchs_order():
    """A tensor hook of the node's output, then retain_grad's capture, then the node's
    pre-hooks in the order registered, then its rule, then its post hooks."""
    def run(lib):
        x = lib.tensor(X, requires_grad=True)
        y = x * 3
        log = []
        y.grad_fn.register_hook(lambda gi, go: log.append(("post", _values(gi), _values(go))))
        y.grad_fn.register_prehook(lambda go: log.append(("pre1", _values(go))) or (go[0] * 5,))
        y.grad_fn.register_prehook(lambda go: log.append(("pre2", _values(go))))
        y.register_hook(lambda g: log.append(("tensor", _values((g,)))) or g + 1)
        y.retain_grad()
        y.sum().backward()
        return log, y.grad.numpy(), x.grad.numpy()
    (k_log, k_y, k_x), (t_log, t_y, t_x) = run(kiln), run(torch)
    assert k_log == t_log
    np.testing.assert_allclose(k_y, t_y, rtol=1e-12)
    np.testing.assert_allclose(k_x, t_x, rtol=1e-12)


def test_accumulate_grad_node_hooks_as_torchs():
    """Hooks on a leaf's AccumulateGrad (`grad_fn.next_functions[0][0]`): the leaf's tensor
    hooks, then the node's pre-hooks (which may replace the gradient), the accumulation, the
    post-accumulate-grad hooks, and the node's post hooks, fn((), (grad,)); each backward."""
    def run(lib):
        x = lib.tensor(X, requires_grad=True)
        log = []
        acc = (x * 2).grad_fn.next_functions[0][0]
        acc.register_hook(lambda gi, go: log.append(("post", gi, _values(go))))
        acc.register_prehook(lambda go: (go[0] + 1,))
        x.register_hook(lambda g: log.append(("tensor", _values((g,)))) or g * 2)
        x.register_post_accumulate_grad_hook(lambda t: log.append(("accumulated",
                                                                   _values((t.grad,)))))
        for _ in range(2):
            (x * 2).sum().backward()
        return log, x.grad.numpy()
    (k_log, k_grad), (t_log, t_grad) = run(kiln), run(torch)
    assert k_log == t_log
    np.testing.assert_allclose(k_grad, t_grad, rtol=1e-12)


def test_custom_function_node_hooks_as_torchs():
    def run(lib):
        x = lib.tensor(X, requires_grad=True)
        y = _Twice.make(lib).apply(x * 1)
        log = []
        y.grad_fn.register_prehook(lambda go: log.append(("pre", _values(go))))
        y.grad_fn.register_hook(lambda gi, go: log.append(("post", _values(gi), _values(go)))
                                or (gi[0] * 3,))
        y.sum().backward()
        return log, x.grad.numpy()
    (k_log, k_grad), (t_log, t_grad) = run(kiln), run(torch)
    assert k_log == t_log
    np.testing.assert_allclose(k_grad, t_grad, rtol=1e-12)


BAD_HOOKS = [
    ("post, too few", "register_hook", lambda gi, go: (gi[0],)),
    ("post, not a tuple", "register_hook", lambda gi, go: 3),
    ("post, a list", "register_hook", lambda gi, go: list(gi)),
    ("post, a gradient where None", "register_hook", lambda gi, go: (gi[0], gi[0])),
    ("pre, too many", "register_prehook", lambda go: (go[0], go[0])),
    ("pre, a list", "register_prehook", lambda go: [go[0]]),
]


@pytest.mark.parametrize("method,hook", [pytest.param(m, h, id=n) for n, m, h in BAD_HOOKS])
def test_node_hook_results_are_checked_as_torchs(method, hook):
    seen = []
    for lib in (torch, kiln):
        x = lib.tensor(X, requires_grad=True)
        y = x * lib.tensor(M[:3, :4])
        getattr(y.grad_fn, method)(hook)
        with pytest.raises((TypeError, RuntimeError)) as info:
            y.sum().backward()
        seen.append((info.type, str(info.value).split("\n")[0]))
    assert seen[1] == seen[0]


def test_node_prehook_returning_none_gradient_stops_it_as_torchs():
    grads = []
    for lib in (torch, kiln):
        x = lib.tensor(X, requires_grad=True)
        y = x * 2
        y.grad_fn.register_prehook(lambda go: (None,))
        z = (y + x).sum()
        z.backward()
        grads.append(x.grad.numpy())
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            z.backward()            # the node's saved values were freed all the same
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)


M2 = np.random.default_rng(2).normal(size=(5, 4))
COMPOSITES = [      # nodes kiln computes as several: their post hooks see PyTorch's grad_inputs
    ("linear", lambda t, x, w, v: t.nn.functional.linear(x, w, w[:, 0])),
    ("Linear layer", lambda t, x, w, v: _linear_layer(t)(x)),
    ("linear, input without grad", lambda t, x, w, v: t.nn.functional.linear(x.detach(), w)),
    ("mv", lambda t, x, w, v: t.mv(x, v)),
    ("dot", lambda t, x, w, v: t.dot(v, v * 2)),
    ("dot with a constant", lambda t, x, w, v: v.detach() @ v),
    ("setitem", lambda t, x, w, v: _written(x * 1, 0, v)),
    ("write through a view", lambda t, x, w, v: _multiplied_row(x * 1, v)),
    ("cross_entropy", lambda t, x, w, v: t.nn.functional.cross_entropy(x, t.tensor([0, 3, 1]))),
    ("mean", lambda t, x, w, v: (x * 2).mean(1)),
    ("layer_norm", lambda t, x, w, v: t.nn.functional.layer_norm(x, (4,), v, v * 2)),
    ("clamp, a tensor bound", lambda t, x, w, v: x.clamp(min=v * 0.1)),
    ("clamp, both bounds", lambda t, x, w, v: t.clamp(x, v * 0.1, x.detach() + 1)),
    ("conv2d", lambda t, x, w, v: t.nn.functional.conv2d(x.reshape(1, 1, 3, 4),
                                                          w[:2, :2].reshape(2, 1, 2, 1), v[:2])),
    ("max_pool2d", lambda t, x, w, v: t.nn.functional.max_pool2d(x.reshape(1, 3, 4), 2)),
    ("stack", lambda t, x, w, v: t.stack([x, x * 2])),
    ("softmax", lambda t, x, w, v: (x * 2).softmax(1)),
]


def _linear_layer(lib):
    layer = lib.nn.Linear(4, 5).double()
    with lib.no_grad():
        layer.weight.copy_(lib.tensor(M2))
    return layer


def _written(y, i, v):
    y[i] = v
    return y


def _multiplied_row(y, v):
    y[1].mul_(v)
    return y


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in COMPOSITES])
def test_post_hooks_on_nodes_kiln_computes_as_several_are_torchs(call):
    """AddmmBackward0, MvBackward0, DotBackward0, CopySlices and the named composites: a post
    hook gets one gradient per next_functions entry (None where torch gives None) and the
    node's output gradient, and the tuple it returns is what the inputs receive."""
    def run(lib):
        x = lib.tensor(X, requires_grad=True)
        w = lib.tensor(M2, requires_grad=True)
        v = lib.tensor(X[0] + 1, requires_grad=True)
        y = call(lib, x, w, v)
        log = []
        y.grad_fn.register_hook(lambda gi, go: log.append((_values(gi), _values(go))) or
                                tuple(None if g is None else g * 3 for g in gi))
        y.grad_fn.register_hook(lambda gi, go: log.append(_values(gi)))
        weights = lib.tensor(np.linspace(-1, 2, y.numel()).reshape(tuple(y.shape)))
        (y * weights).sum().backward()
        return log, [None if t.grad is None else t.grad.numpy() for t in (x, w, v)]
    (k_log, k_grads), (t_log, t_grads) = run(kiln), run(torch)
    assert k_log == t_log
    for k, t in zip(k_grads, t_grads):
        assert (k is None) == (t is None)
        if t is not None:
            np.testing.assert_allclose(k, t, rtol=1e-12, atol=1e-12)


def test_post_hooks_on_a_composite_with_retain_graph_and_shared_inputs():
    """The composite's inputs also reached by other paths, and backward run twice."""
    def run(lib):
        x = lib.tensor(X, requires_grad=True)
        w = lib.tensor(M2, requires_grad=True)
        h = x * 2
        y = lib.nn.functional.linear(h, w, w[:, 1])
        log = []
        y.grad_fn.register_hook(lambda gi, go: log.append(_values(gi)))
        z = y.sin().sum() + (h * w[:3]).sum()
        z.backward(retain_graph=True)
        z.backward()
        return log, x.grad.numpy(), w.grad.numpy()
    (k_log, *k_grads), (t_log, *t_grads) = run(kiln), run(torch)
    assert k_log == t_log
    for k, t in zip(k_grads, t_grads):
        np.testing.assert_allclose(k, t, rtol=1e-12, atol=1e-12)


def test_post_hook_on_a_composite_of_one_tensor_twice_refuses():
    """x.dot(x) lists x twice; kiln's inner nodes do not tell its two gradients apart."""
    x = kiln.tensor(X[0], requires_grad=True)
    with pytest.raises(NotImplementedError, match="post hook on DotBackward0"):
        x.dot(x).grad_fn.register_hook(lambda gi, go: None)


def _tree(node, depth: int = 5):
    """A node's name and, below it, its next_functions' trees (None for no gradient)."""
    if node is None:
        return None
    kids = tuple(_tree(n, depth - 1) for n, _ in node.next_functions) if depth else ()
    return (type(node).__name__, node.name(), kids)


R = np.random.default_rng(5)
MATMUL_1D = [
    ("matrix @ vector", (3, 4), (4,), lambda t, a, b: a @ b),
    ("mv", (3, 4), (4,), lambda t, a, b: t.mv(a, b)),
    ("Tensor.matmul", (3, 4), (4,), lambda t, a, b: a.matmul(b)),
    ("vector @ vector", (4,), (4,), lambda t, a, b: a @ b),
    ("dot", (4,), (4,), lambda t, a, b: t.dot(a, b)),
    ("vector @ matrix", (3,), (3, 4), lambda t, a, b: t.matmul(a, b)),
    ("batch @ vector", (2, 3, 4), (4,), lambda t, a, b: t.matmul(a, b)),
    ("4-d batch @ vector", (5, 2, 3, 4), (4,), lambda t, a, b: a @ b),
    ("vector @ batch", (3,), (2, 3, 4), lambda t, a, b: a @ b),
    ("vector @ batch, transposed", (3,), (2, 4, 3), lambda t, a, b: a @ b.transpose(1, 2)),
    ("vector @ batch of columns", (3,), (2, 3, 1), lambda t, a, b: a @ b),
    ("batch @ matrix", (2, 3, 4), (5, 4), lambda t, a, b: a @ b.t()),
    ("matrix @ constant vector", (3, 4), (4,), lambda t, a, b: a @ b.detach()),
    ("constant batch @ vector", (2, 3, 4), (4,), lambda t, a, b: a.detach() @ b),
]


@pytest.mark.parametrize("shape_a,shape_b,call",
                         [pytest.param(sa, sb, c, id=n) for n, sa, sb, c in MATMUL_1D])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matmul_with_a_vector_has_torchs_nodes_and_gradients(shape_a, shape_b, call, dtype):
    """matmul, mv, dot and @ with a 1-d operand: PyTorch's MvBackward0 and DotBackward0 (over
    the operands themselves), and its views around them for the other ranks; the values and
    both operands' gradients as PyTorch's."""
    data_a, data_b = R.normal(size=shape_a), R.normal(size=shape_b)
    seen = []
    for lib in (torch, kiln):
        a = lib.tensor(data_a, dtype=getattr(lib, dtype), requires_grad=True)
        b = lib.tensor(data_b, dtype=getattr(lib, dtype), requires_grad=True)
        out = call(lib, a, b)
        tree = _tree(out.grad_fn)
        weights = lib.tensor(np.linspace(-1, 2, out.numel()).reshape(tuple(out.shape)),
                             dtype=out.dtype)
        (out * weights).sum().backward()
        seen.append((tree, out.detach().numpy(), [None if t.grad is None else t.grad.numpy()
                                                  for t in (a, b)]))
    (k_tree, k_out, k_grads), (t_tree, t_out, t_grads) = seen[1], seen[0]
    assert k_tree == t_tree
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(k_out, t_out, rtol=tol, atol=tol)
    for k, t in zip(k_grads, t_grads):
        assert (k is None) == (t is None)
        if t is not None:
            np.testing.assert_allclose(k, t, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape_a,shape_b", [((3,), (4,)), ((2, 3), (4,)), ((3,), (2, 4, 5)),
                                             ((2, 3, 4), (5,)), ((3,), (2, 5, 4, 6))])
def test_matmul_with_a_vector_refuses_mismatched_sizes_as_torch(shape_a, shape_b):
    with pytest.raises(RuntimeError) as expected:
        torch.ones(shape_a) @ torch.ones(shape_b)
    with pytest.raises(RuntimeError) as got:
        kiln.ones(shape_a) @ kiln.ones(shape_b)
    # PyTorch's sentence (its dot message goes on to count the elements once more)
    assert str(expected.value).startswith(str(got.value).split(": ", 1)[1].rsplit(" (at ", 1)[0])
