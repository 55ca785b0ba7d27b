"""kiln.autograd.graph.saved_tensors_hooks, save_on_cpu and disable_saved_tensors_hooks,
against PyTorch: how often the hooks run, what they are given, and that backward computes with
what unpack gives back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4))
Y = RNG.standard_normal((3, 4))
W = RNG.standard_normal((4, 5))
LIN_W = RNG.standard_normal((5, 4))
LIN_B = RNG.standard_normal(5)


def _tensors(lib):
    x = lib.tensor(X, requires_grad=True)
    y = lib.tensor(Y, requires_grad=True)
    w = lib.tensor(W, requires_grad=True)
    return x, y, w


def _linear_relu(lib, x):
    model = lib.nn.Sequential(lib.nn.Linear(4, 5), lib.nn.ReLU()).double()
    with lib.no_grad():
        model[0].weight.copy_(lib.tensor(LIN_W))
        model[0].bias.copy_(lib.tensor(LIN_B))
    return model(x), list(model.parameters())


def _mul_function(lib):
    class Mul(lib.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * b

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            return g * b, g * a
    return Mul


# each case: lib, (x, y, w) -> (output, tensors whose gradients are compared)
GRAPHS = {
    "mul": lambda lib, x, y, w: (x * y, [x, y]),
    "mul_constant_factor": lambda lib, x, y, w: (x * y.detach(), [x]),
    "square": lambda lib, x, y, w: (x * x, [x]),
    "sin": lambda lib, x, y, w: (x.sin(), [x]),
    "matmul": lambda lib, x, y, w: (x @ w, [x, w]),
    "matmul_sin": lambda lib, x, y, w: ((x @ w).sin().exp(), [x, w]),
    "linear_relu": lambda lib, x, y, w: _linear_relu(lib, x),
    "linear_relu_constant_input": lambda lib, x, y, w: _linear_relu(lib, x.detach()),
    "custom_function": lambda lib, x, y, w: (_mul_function(lib).apply(x, y), [x, y]),
}


def _run(lib, graph, pack, unpack, retain=False):
    """Build `graph` under the hooks, backward once (twice with `retain`); the gradients."""
    x, y, w = _tensors(lib)
    with lib.autograd.graph.saved_tensors_hooks(pack, unpack):
        out, wrt = GRAPHS[graph](lib, x, y, w)
    loss = out.sum()
    if retain:
        loss.backward(retain_graph=True)
    loss.backward()
    return [t.grad.detach().numpy().copy() for t in wrt]


def _counting():
    calls = {"pack": 0, "unpack": 0}

    def pack(t):
        calls["pack"] += 1
        return t

    def unpack(t):
        calls["unpack"] += 1
        return t
    return calls, pack, unpack


@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_hook_calls_and_gradients_match_torch(graph, retain):
    k_calls, k_pack, k_unpack = _counting()
    t_calls, t_pack, t_unpack = _counting()
    k_grads = _run(kiln, graph, k_pack, k_unpack, retain)
    t_grads = _run(torch, graph, t_pack, t_unpack, retain)
    assert k_calls == t_calls
    assert k_calls["pack"] > 0
    for kg, tg in zip(k_grads, t_grads):
        np.testing.assert_allclose(kg, tg, rtol=1e-12, atol=1e-12)


def _numpy_round_trip(lib):
    return (lambda t: t.detach().numpy().copy()), (lambda a: lib.tensor(a))


def _tuple_pack(lib):
    return (lambda t: ("saved", t.shape, t.detach().numpy().copy())), \
        (lambda p: lib.tensor(p[2]))


def _to_disk(lib, folder):
    counter = [0]

    def pack(t):
        counter[0] += 1
        path = folder / f"{lib.__name__}_{counter[0]}.npy"
        np.save(path, t.detach().numpy())
        return str(path)

    def unpack(path):
        return lib.tensor(np.load(path))
    return pack, unpack


@pytest.mark.parametrize("hooks", ["numpy", "tuple", "disk"])
@pytest.mark.parametrize("graph", ["mul", "matmul_sin", "linear_relu", "custom_function"])
def test_gradients_unchanged_by_value_preserving_hooks(graph, hooks, tmp_path):
    plain = _run(kiln, graph, lambda t: t, lambda t: t)
    for lib in (kiln, torch):
        if hooks == "numpy":
            pack, unpack = _numpy_round_trip(lib)
        elif hooks == "tuple":
            pack, unpack = _tuple_pack(lib)
        else:
            pack, unpack = _to_disk(lib, tmp_path)
        grads = _run(lib, graph, pack, unpack)
        for g, p in zip(grads, plain):
            np.testing.assert_allclose(g, p, rtol=1e-12, atol=1e-12)
    assert any(tmp_path.iterdir()) == (hooks == "disk")


@pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])
def test_backward_uses_what_unpack_returns(lib):
    # unpack doubles the saved x: sin's gradient becomes cos(2x), in both libraries
    x = lib.tensor(X, requires_grad=True)
    with lib.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t * 2):
        y = x.sin()
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.cos(2 * X), rtol=1e-12)


def test_pack_gets_the_saved_tensor_at_forward_time_with_grad_mode_off():
    seen = {}
    for lib in (kiln, torch):
        log = []
        x = lib.tensor(X, requires_grad=True)

        def pack(t):
            log.append(("pack", t.detach().numpy().copy(), lib.is_grad_enabled()))
            return t

        with lib.autograd.graph.saved_tensors_hooks(pack, lambda t: log.append("unpack") or t):
            h = x * 3
            y = h.sin()
            assert len(log) == 1          # saved when the op runs, before any backward
        y.sum().backward()
        seen[lib.__name__] = log
    (_, k_value, k_grad_mode), k_unpack = seen["kiln"]
    (_, t_value, t_grad_mode), t_unpack = seen["torch"]
    np.testing.assert_allclose(k_value, 3 * X, rtol=1e-12)
    np.testing.assert_allclose(k_value, t_value, rtol=1e-12)
    assert k_grad_mode is t_grad_mode is False
    assert k_unpack == t_unpack == "unpack"


def test_nested_hooks_innermost_wins_like_torch():
    logs = []
    for lib in (kiln, torch):
        log = []
        x = lib.tensor(X, requires_grad=True)
        hooks = lib.autograd.graph.saved_tensors_hooks
        with hooks(lambda t: log.append("pack outer") or t,
                   lambda t: log.append("unpack outer") or t):
            with hooks(lambda t: log.append("pack inner") or (t, "inner"),
                       lambda p: log.append("unpack inner") or p[0]):
                h = x.sin()
            y = h.exp()
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), np.exp(np.sin(X)) * np.cos(X), rtol=1e-12)
        logs.append(log)
    assert logs[0] == logs[1] == ["pack inner", "pack outer", "unpack outer", "unpack inner"]


def test_second_order_gradients_through_unpacked_tensors():
    results = []
    for lib in (kiln, torch):
        pack, unpack = _numpy_round_trip(lib)
        x = lib.tensor(X, requires_grad=True)
        with lib.autograd.graph.saved_tensors_hooks(pack, unpack):
            y = (x.sin() * x).sum()
        g, = lib.autograd.grad(y, x, create_graph=True)
        g2, = lib.autograd.grad(g.sum(), x)
        results.append((g.detach().numpy(), g2.numpy()))
    for k, t in zip(*results):
        np.testing.assert_allclose(k, t, rtol=1e-12, atol=1e-12)


def test_unpack_returning_a_non_tensor_is_a_type_error():
    x = kiln.tensor(X, requires_grad=True)
    with kiln.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: 3):
        y = x.sin()
    with pytest.raises(TypeError, match="unpack_hook expected to be a Tensor.*int"):
        y.sum().backward()


def test_unpack_returning_the_wrong_shape_names_both_shapes():
    x = kiln.tensor(X, requires_grad=True)
    with kiln.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t[:1]):
        y = x.sin()
    with pytest.raises(RuntimeError, match=r"SinBackward0.*shape \[1, 4\].*shape \[3, 4\]"):
        y.sum().backward()
    Mul = _mul_function(kiln)
    with kiln.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t.reshape(-1)):
        y = Mul.apply(x, x)
    with pytest.raises(RuntimeError, match=r"Mul.saved_tensors.*shape \[12\]"):
        y.sum().backward()


def test_unpack_may_change_dtype_the_rule_gets_the_saved_dtype():
    x = kiln.tensor(X.astype(np.float32), requires_grad=True)
    with kiln.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t.double()):
        y = x.sin()
    y.sum().backward()
    assert x.grad.dtype == kiln.float32
    np.testing.assert_allclose(x.grad.numpy(), np.cos(X), rtol=1e-6)


@pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])
def test_disable_saved_tensors_hooks(lib):
    graph = lib.autograd.graph
    x = lib.tensor(X, requires_grad=True)
    with graph.disable_saved_tensors_hooks("no hooks in this block"):
        with pytest.raises(RuntimeError, match="no hooks in this block"):
            with graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                pass
        x.sin().sum().backward()          # ordinary autograd is not affected
    np.testing.assert_allclose(x.grad.numpy(), np.cos(X), rtol=1e-12)
    with graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        with pytest.raises(RuntimeError, match="hooks are on"):
            with graph.disable_saved_tensors_hooks("hooks are on"):
                pass
    with graph.save_on_cpu():             # the block above left nothing disabled
        pass


@pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])
def test_save_on_cpu_on_cpu_tensors(lib):
    x, y, w = _tensors(lib)
    with lib.autograd.graph.save_on_cpu(pin_memory=False):
        out = ((x @ w).relu() * 2).sum() + (x * y).sin().sum()
    out.backward()
    relu_mask = (X @ W) > 0
    np.testing.assert_allclose(w.grad.numpy(), X.T @ (2.0 * relu_mask), rtol=1e-12)
    np.testing.assert_allclose(y.grad.numpy(), np.cos(X * Y) * X, rtol=1e-12)


@pytest.mark.gpu
def test_save_on_cpu_keeps_cuda_tensors_in_host_memory():
    if not kiln.cuda.is_available():
        pytest.skip("no cuda device")
    x = kiln.tensor(X, requires_grad=True, device="cuda")
    w = kiln.tensor(W, requires_grad=True, device="cuda")
    hooks = kiln.autograd.graph.save_on_cpu()
    kept = []
    pack = hooks.pack_hook
    hooks.pack_hook = lambda t: kept.append(pack(t)) or kept[-1]
    with hooks:
        out = (x @ w).sin().sum()
    assert [p[1].device.type for p in kept] == ["cpu"] * 3
    assert all(p[0].type == "cuda" for p in kept)
    out.backward()
    assert x.grad.device.type == "cuda"
    np.testing.assert_allclose(x.grad.cpu().numpy(), np.cos(X @ W) @ W.T, rtol=1e-12)


def test_the_graph_does_not_keep_a_packed_tensor():
    # what pack returned stands for the tensor: the node keeps its shape, not the tensor
    x = kiln.tensor(X, requires_grad=True)
    pack, unpack = _numpy_round_trip(kiln)
    with kiln.autograd.graph.saved_tensors_hooks(pack, unpack):
        h = x * 2
        y = h.sin()
    node = y.grad_fn
    assert node.inputs[0] is not h and node.inputs[0]._data.strides == (0, 0)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.cos(2 * X), rtol=1e-12)


def test_in_place_write_after_saving_is_still_detected():
    x = kiln.tensor(X, requires_grad=True)
    h = x * 1
    with kiln.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        y = h.exp()                      # exp saves its output
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_compiled_function_entering_hooks_runs_eagerly_with_the_hooks():
    calls, pack, unpack = _counting()
    w = kiln.tensor(W, requires_grad=True)

    @kiln.compile
    def step(x):
        with kiln.autograd.graph.saved_tensors_hooks(pack, unpack):
            loss = (x @ w).sin().sum()
        loss.backward()
        return loss

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            step(kiln.tensor(X))
    assert calls == {"pack": 6, "unpack": 6}      # matmul's x, sin's input: each call
    assert any("saved_tensors_hooks" in str(c.message) for c in caught)
    np.testing.assert_allclose(w.grad.numpy(), 3 * (X.T @ np.cos(X @ W)), rtol=1e-12)


def test_compiled_function_called_inside_hooks_runs_eagerly():
    w = kiln.tensor(W, requires_grad=True)

    @kiln.compile
    def loss_of(x):
        return (x @ w).sin().sum()

    loss_of(kiln.tensor(X)).backward()               # compiled, outside any hooks
    calls, pack, unpack = _counting()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with kiln.autograd.graph.saved_tensors_hooks(pack, unpack):
            loss = loss_of(kiln.tensor(X))
    loss.backward()
    assert calls == {"pack": 2, "unpack": 2}
    assert any("saved_tensors_hooks" in str(c.message) for c in caught)
    np.testing.assert_allclose(w.grad.numpy(), 2 * (X.T @ np.cos(X @ W)), rtol=1e-12)
    with pytest.raises(kiln.compiler.GraphBreak, match="saved_tensors_hooks"):
        with kiln.autograd.graph.saved_tensors_hooks(pack, unpack):
            kiln.compile(fullgraph=True)(lambda x: (x @ w).sum())(kiln.tensor(X))


@pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])
def test_saved_attributes_of_grad_fn(lib):
    a = lib.tensor(X, requires_grad=True)
    b = lib.tensor(Y, requires_grad=True)
    y = a * b
    assert y.grad_fn._saved_self is a and y.grad_fn._saved_other is b
    e = a.exp()
    assert e.grad_fn._saved_result is not e and e.grad_fn._saved_result.equal(e)
    with pytest.raises(AttributeError):
        a.sin().grad_fn._saved_other
    calls, pack, unpack = _counting()
    with lib.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = a * b
    np.testing.assert_allclose(y.grad_fn._saved_other.detach().numpy(), Y, rtol=0)
    y.grad_fn._saved_self
    assert calls == {"pack": 2, "unpack": 2}       # each access unpacks
    with lib.autograd.graph.saved_tensors_hooks(pack, unpack):
        e = (a * 1).exp()                          # mul saves nothing: 1 * a needs no a
    np.testing.assert_allclose(e.grad_fn._saved_result.detach().numpy(), np.exp(X), rtol=1e-12)
    assert calls == {"pack": 3, "unpack": 3}
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.grad_fn._saved_self


@pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])
def test_increment_version_invalidates_what_a_node_saved(lib):
    x = lib.tensor(X, requires_grad=True)
    y = x.exp()                                  # exp saves its output
    z = (x * 2).sin()
    lib.autograd.graph.increment_version([z])    # z is saved by nothing: harmless
    lib.autograd.graph.increment_version(y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.cos(2 * X), rtol=1e-12)


@pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])
def test_hooks_hold_for_the_thread_that_entered_them(lib):
    import threading
    calls, pack, unpack = _counting()
    entered, done = threading.Event(), threading.Event()
    other = {}

    def worker():
        try:
            entered.wait(30)
            x = lib.tensor(X, requires_grad=True)
            (x * x).sum().backward()
            other["grad"] = x.grad.numpy().copy()
        finally:
            done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    x = lib.tensor(X, requires_grad=True)
    with lib.autograd.graph.saved_tensors_hooks(pack, unpack):
        entered.set()
        done.wait(30)
        y = x.sin()
    thread.join()
    y.sum().backward()
    assert calls == {"pack": 1, "unpack": 1}       # the other thread's x * x saved nothing here
    np.testing.assert_allclose(other["grad"], 2 * X, rtol=1e-12)


@pytest.mark.parametrize("hooks", ["identity", "numpy"])
def test_in_place_op_whose_old_value_a_hook_kept(hooks):
    # h.mul_(w): w's gradient needs h's value before the write, which an identity pack hook
    # kept as the very tensor the write then changes
    results = []
    for lib in (kiln, torch):
        calls, count_pack, count_unpack = _counting()
        pack, unpack = (lambda t: t, lambda t: t) if hooks == "identity" else \
            _numpy_round_trip(lib)
        x = lib.tensor(X, requires_grad=True)
        w = lib.tensor(Y, requires_grad=True)
        h = x * 1
        with lib.autograd.graph.saved_tensors_hooks(lambda t: count_pack(pack(t)),
                                                    lambda p: unpack(count_unpack(p))):
            h.mul_(w)
            h.exp_()
        h.sum().backward()
        results.append((calls, x.grad.numpy().copy(), w.grad.numpy().copy()))
    assert results[0][0] == results[1][0] == {"pack": 3, "unpack": 3}
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)
    np.testing.assert_allclose(results[0][2], np.exp(X * Y) * X, rtol=1e-12)


def test_in_place_write_into_an_output_a_hook_kept():
    # kiln's div rule reads its output (torch's reads the inputs): writing into the quotient
    # after an identity pack hook kept it must not change the gradients
    results = []
    for lib in (kiln, torch):
        calls, pack, unpack = _counting()
        x = lib.tensor(X, requires_grad=True)
        z = lib.tensor(Y ** 2 + 1, requires_grad=True)
        with lib.autograd.graph.saved_tensors_hooks(pack, unpack):
            q = x / z
        q.mul_(3)
        q.sum().backward()
        results.append((calls, x.grad.numpy().copy(), z.grad.numpy().copy()))
    assert results[0][0] == results[1][0] == {"pack": 2, "unpack": 2}
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-12)


def _exp_function(lib):
    class Exp(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            y, = ctx.saved_tensors
            return g * y
    return Exp


def test_custom_function_saving_its_output_double_backward():
    results = []
    for lib in (kiln, torch):
        pack, unpack = _numpy_round_trip(lib)
        x = lib.tensor(X, requires_grad=True)
        with lib.autograd.graph.saved_tensors_hooks(pack, unpack):
            y = _exp_function(lib).apply(x * 2)
        g, = lib.autograd.grad(y.sum(), x, create_graph=True)
        g2, = lib.autograd.grad(g.sum(), x)
        results.append((g.detach().numpy(), g2.numpy()))
    np.testing.assert_allclose(results[0][0], 2 * np.exp(2 * X), rtol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)
    np.testing.assert_allclose(results[0][1], 4 * np.exp(2 * X), rtol=1e-12)


def test_raw_saved_tensor_register_hooks_like_torch():
    results = []
    for lib in (kiln, torch):
        log = []
        x = lib.tensor(X, requires_grad=True)
        y = lib.tensor(Y, requires_grad=True)
        z = x * y
        e = z.exp()
        z.grad_fn._raw_saved_other.register_hooks(lambda t: log.append("pack y") or t * 2,
                                                  lambda t: log.append("unpack y") or t / 2)
        e.grad_fn._raw_saved_result.register_hooks(
            lambda t: log.append("pack e") or t.detach().numpy().copy(),
            lambda a: log.append("unpack e") or lib.tensor(a))
        assert log == ["pack y", "pack e"]                  # packed at registration
        with pytest.raises(RuntimeError, match="hooks have already been set"):
            z.grad_fn._raw_saved_other.register_hooks(lambda t: t, lambda t: t)
        with pytest.raises(TypeError):
            z.grad_fn._raw_saved_self.register_hooks(lambda t: t, 3)
        np.testing.assert_allclose(z.grad_fn._raw_saved_other.unpack().detach().numpy(), Y,
                                   rtol=1e-12)
        e.sum().backward()
        with pytest.raises(RuntimeError, match="after it has been freed|second time"):
            z.grad_fn._raw_saved_self.register_hooks(lambda t: t, lambda t: t)
        results.append((log, x.grad.numpy().copy(), y.grad.numpy().copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-12)
    with kiln.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        s = kiln.tensor(X, requires_grad=True).sin()
    with pytest.raises(RuntimeError, match="hooks have already been set"):
        s.grad_fn._raw_saved_self.register_hooks(lambda t: t, lambda t: t)
