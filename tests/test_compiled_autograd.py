"""Compiled autograd (kiln._dynamo.compiled_autograd): an eager backward() run as one compiled
program per graph structure, its gradients checked against the plain engine's and PyTorch's;
the replay from cache, the fallbacks (with their warnings) and what stays eager."""

import warnings

import numpy as np
import pytest
import torch

import kiln
from kiln._dynamo import compiled_autograd
from kiln._dynamo.utils import counters

ATOL, RTOL = 1e-5, 1e-5


@pytest.fixture(autouse=True)
def _fresh_cache():
    compiled_autograd.reset()
    counters.clear()
    yield
    compiled_autograd.reset()


def counting_compiler(made: list):
    """A compiler_fn that records each backward it is handed, then compiles it with kiln."""
    def compiler_fn(fn):
        made.append(kiln.compile(fn))
        return made[-1]
    return compiler_fn


def compiled_entries(made: list) -> list:
    return [e for compiled in made for e in compiled.entries.values()]


def torch_twin(kiln_model, torch_model):
    """`torch_model` with `kiln_model`'s parameters (same names, same values)."""
    state = {k: torch.from_numpy(v.detach().numpy().copy())
             for k, v in kiln_model.state_dict().items()}
    torch_model.load_state_dict(state)
    return torch_model


def assert_grads(kiln_params, torch_params):
    for (name, p), q in zip(kiln_params, torch_params):
        if q.grad is None:
            assert p.grad is None, f"{name}: kiln has a .grad, torch has none"
            continue
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), atol=ATOL, rtol=RTOL,
                                   err_msg=name)


def mlp(lib):
    return lib.nn.Sequential(lib.nn.Linear(10, 32), lib.nn.ReLU(), lib.nn.Linear(32, 32),
                             lib.nn.Tanh(), lib.nn.Linear(32, 3))


def cnn(lib):
    return lib.nn.Sequential(lib.nn.Conv2d(3, 8, 3, padding=1), lib.nn.ReLU(),
                             lib.nn.MaxPool2d(2), lib.nn.Conv2d(8, 4, 3), lib.nn.ReLU(),
                             lib.nn.Flatten(), lib.nn.Linear(4 * 2 * 2, 5))


def train_steps(model, x, y, steps, zero=True):
    for _ in range(steps):
        if zero:
            model.zero_grad()
        loss = kiln.nn.functional.cross_entropy(model(x), y)
        loss.backward()


@pytest.mark.parametrize("make,shape", [(mlp, (16, 10)), (cnn, (4, 3, 8, 8))])
def test_model_gradients_equal_plain_backward_and_torch_and_replay(make, shape):
    kiln.manual_seed(0)
    model = make(kiln)
    twin = torch_twin(model, make(torch))
    rng = np.random.default_rng(0)
    y = np.arange(shape[0]) % 3
    made = []
    for step in range(3):        # new data each step: a replay must read this step's tensors
        x = rng.standard_normal(shape).astype(np.float32)
        train_steps(model, kiln.tensor(x), kiln.tensor(y), 1)
        plain = [p.grad.numpy().copy() for p in model.parameters()]
        with compiled_autograd.enable(counting_compiler(made)):
            train_steps(model, kiln.tensor(x), kiln.tensor(y), 1)
        for p, g in zip(model.parameters(), plain):     # compiled kernels round apart
            np.testing.assert_allclose(p.grad.numpy(), g, atol=1e-6, rtol=1e-5)
        twin.zero_grad()
        torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)),
                                          torch.from_numpy(y)).backward()
        assert_grads(model.named_parameters(), twin.parameters())
    # one capture, compiled once; the second and third backwards replayed its program
    assert counters["compiled_autograd"]["captures"] == 1 and len(made) == 1
    (entry,) = compiled_entries(made)
    assert entry.program is not None and entry.calls == 2


def test_compiled_autograd_tutorial():
    model = kiln.nn.Linear(10, 10)
    twin = torch_twin(model, torch.nn.Linear(10, 10))
    x = kiln.randn(10)
    kiln._dynamo.config.compiled_autograd = True
    try:
        @kiln.compile
        def train(model, x):
            loss = model(x).sum()
            loss.backward()
        train(model, x)
    finally:
        kiln._dynamo.config.compiled_autograd = False
    loss = model(x).sum()
    with kiln._dynamo.compiled_autograd.enable(kiln.compile(fullgraph=True)):
        loss.backward()
    tx = torch.from_numpy(x.numpy())
    for _ in range(2):
        twin(tx).sum().backward()
    assert_grads(model.named_parameters(), twin.parameters())
    assert counters["compiled_autograd"]["captures"] == 1


def test_tensor_hook_and_graph_break_function_as_in_the_tutorial():
    @kiln.compile(backend="aot_eager")
    def fn(x):
        temp = x + 10
        kiln._dynamo.graph_break()
        return temp.sum()

    x = kiln.randn(10, 10, requires_grad=True)
    x.register_hook(lambda grad: grad + 10)
    tx = torch.from_numpy(x.detach().numpy()).requires_grad_()
    tx.register_hook(lambda grad: grad + 10)
    counters.clear()
    with pytest.warns(UserWarning, match="graph break in fn"):
        with kiln._dynamo.compiled_autograd.enable(kiln.compile(backend="aot_eager")):
            fn(x).backward()
    (tx + 10).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), atol=ATOL)
    # PyTorch counts 3 graphs: fn split at its break (2) and the backward (1); kiln runs a
    # function with a break eagerly, so it counts the backward's graph only
    assert counters["compiled_autograd"]["captures"] == 1
    assert counters["stats"]["unique_graphs"] == 1


def test_hooks_on_leaves_and_intermediates_and_retained_grads_match_torch():
    def run(lib, w, b):
        h = (w * b).tanh()
        h.register_hook(lambda g: g * 3)
        h.retain_grad()
        b.register_hook(lambda g: g - 1)
        out = (h * h).sum()
        out.backward()
        return h

    rng = np.random.default_rng(1)
    w0, b0 = rng.standard_normal((4, 5)), rng.standard_normal((5,))
    tw, tb = (torch.tensor(a, requires_grad=True) for a in (w0, b0))
    th = run(torch, tw, tb)
    made = []
    for _ in range(2):       # the second backward of the same structure replays
        w, b = (kiln.tensor(a, requires_grad=True) for a in (w0, b0))
        with compiled_autograd.enable(counting_compiler(made)):
            h = run(kiln, w, b)
        np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), atol=1e-10)
        np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), atol=1e-10)
        np.testing.assert_allclose(h.grad.numpy(), th.grad.numpy(), atol=1e-10)
    assert w.grad.dtype is kiln.float64 and h.grad.shape == (4, 5)
    # each run registers new lambdas, hooks are keyed by identity: two captures, both compiled
    assert len(made) == 2 and all(e.program is not None for e in compiled_entries(made))


def test_grad_accumulation_over_two_backwards_and_frozen_parameters():
    kiln.manual_seed(3)
    model = mlp(kiln)
    twin = torch_twin(model, mlp(torch))
    for lib_model in (model, twin):
        lib_model[0].weight.requires_grad_(False)
        lib_model[0].bias.requires_grad_(False)
    x = np.random.default_rng(2).standard_normal((8, 10)).astype(np.float32)
    made = []
    with compiled_autograd.enable(counting_compiler(made)):
        for _ in range(2):
            model(kiln.tensor(x)).pow(2).mean().backward()
    for _ in range(2):
        twin(torch.from_numpy(x)).pow(2).mean().backward()
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert_grads(model.named_parameters(), twin.parameters())
    assert len(made) == 1 and compiled_entries(made)[0].calls == 1


def test_retain_graph_and_a_second_backward_through_a_freed_graph():
    a0 = np.random.default_rng(4).standard_normal(6)
    a, ta = kiln.tensor(a0, requires_grad=True), torch.tensor(a0, requires_grad=True)
    with compiled_autograd.enable():
        loss = (a.sin() * a).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            loss.backward()
    tloss = (ta.sin() * ta).sum()
    tloss.backward(retain_graph=True)
    tloss.backward()
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), atol=1e-12)
    assert counters["compiled_autograd"]["captures"] == 1


def test_a_new_shape_is_a_new_capture():
    made = []
    with compiled_autograd.enable(counting_compiler(made)):
        for n in (3, 4, 3):
            x = kiln.randn(n, requires_grad=True)
            (x.exp() * 2).sum().backward()
            np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp(x.detach().numpy()),
                                       rtol=1e-6)
    assert counters["compiled_autograd"]["captures"] == 2 and len(made) == 2


def test_in_place_write_after_the_forward_raises_the_engines_error():
    x = kiln.randn(3, requires_grad=True)
    y = x * 1
    z = y.exp()
    loss = (z * y).sum()
    z.add_(1)
    with compiled_autograd.enable():
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


class ScaledExp(kiln.autograd.Function):
    """exp(x) * scale, saving its output and keeping `scale` (a number) on ctx."""

    @staticmethod
    def forward(ctx, x, scale):
        y = x.exp() * scale
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return g * y, None


class MaskedSplit(kiln.autograd.Function):
    """(x * mask, x - w): two outputs, a tensor kept as a ctx attribute."""

    @staticmethod
    def forward(ctx, x, w, mask):
        ctx.mask = mask
        return x * mask, x - w

    @staticmethod
    def backward(ctx, g_masked, g_diff):
        return g_masked * ctx.mask + g_diff, -g_diff, None


def scaled_exp_torch(x, scale):
    return x.exp() * scale


def test_custom_functions_compile_and_replay_with_new_values():
    rng = np.random.default_rng(5)
    made = []
    for scale in (2.0, 2.0, 3.0):        # a new ctx value is a new capture
        x0, w0 = rng.standard_normal(4), rng.standard_normal(4)
        mask0 = (rng.random(4) > 0.5).astype(np.float64)
        x, w = (kiln.tensor(a, requires_grad=True) for a in (x0, w0))
        with compiled_autograd.enable(counting_compiler(made)):
            a, b = MaskedSplit.apply(x, w, kiln.tensor(mask0))
            (ScaledExp.apply(a, scale) * b).sum().backward()
        tx, tw = (torch.tensor(v, requires_grad=True) for v in (x0, w0))
        ta, tb = tx * torch.tensor(mask0), tx - tw
        (scaled_exp_torch(ta, scale) * tb).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert counters["compiled_autograd"]["captures"] == 2 and len(made) == 2
    assert [e.calls for e in compiled_entries(made)] == [1, 0]
    assert all(e.program is not None for e in compiled_entries(made))


class NumpyExp(kiln.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return kiln.tensor(g.numpy() * y.numpy())      # computes outside kiln's ops


def test_a_custom_backward_on_numpy_arrays_breaks_the_graph_and_runs_eagerly():
    x0 = np.random.default_rng(11).standard_normal(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with compiled_autograd.enable():
            for k in range(2):      # the second backward runs eagerly too, with new values
                x = kiln.tensor(x0 + k, requires_grad=True)
                (NumpyExp.apply(x) * 2).sum().backward()
                tx = torch.tensor(x0 + k, requires_grad=True)
                (tx.exp() * 2).sum().backward()
                np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    breaks = [w for w in caught if "graph break in compiled_backward" in str(w.message)]
    assert len(breaks) == 1 and "reads a tensor's value" in str(breaks[0].message)


def test_saved_tensor_hooks_fall_back_to_the_plain_engine_with_a_warning():
    x0 = np.random.default_rng(12).standard_normal(4)
    x, tx = kiln.tensor(x0, requires_grad=True), torch.tensor(x0, requires_grad=True)
    with kiln.autograd.graph.saved_tensors_hooks(lambda t: t * 1, lambda t: t):
        y = (x.sin() * x).sum()
    with compiled_autograd.enable():
        with pytest.warns(UserWarning, match="plain autograd engine: .* saved_tensors_hooks"):
            y.backward()
    (tx.sin() * tx).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), atol=1e-12)
    assert counters["compiled_autograd"]["captures"] == 0


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")
def test_create_graph_falls_back_and_keeps_the_double_backward():
    x0 = np.random.default_rng(6).standard_normal(4)
    x, tx = kiln.tensor(x0, requires_grad=True), torch.tensor(x0, requires_grad=True)
    with compiled_autograd.enable():
        with pytest.warns(UserWarning, match="create_graph=True"):
            (x ** 3).sum().backward(create_graph=True)
    (tx ** 3).sum().backward(create_graph=True)
    np.testing.assert_allclose(x.grad.detach().numpy(), tx.grad.detach().numpy(), atol=1e-12)
    (second,) = kiln.autograd.grad(x.grad.sum(), x)
    (tsecond,) = torch.autograd.grad(tx.grad.sum(), tx)
    np.testing.assert_allclose(second.numpy(), tsecond.numpy(), atol=1e-12)


def test_a_hook_reading_a_value_breaks_the_graph_and_the_backward_runs_eagerly():
    seen = []
    v0 = np.random.default_rng(7).standard_normal(3)
    v = kiln.tensor(v0, requires_grad=True)
    v.register_hook(lambda g: seen.append(float(g.sum())))
    with compiled_autograd.enable():
        with pytest.warns(UserWarning, match="graph break in compiled_backward"):
            (v * v).sum().backward()
        (v * v).sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), 4 * v0, atol=1e-12)
    np.testing.assert_allclose(seen, [2 * v0.sum()] * 2, atol=1e-12)


def test_a_hook_with_a_python_effect_runs_on_every_backward():
    calls = []
    w0 = np.random.default_rng(8).standard_normal(3)
    w = kiln.tensor(w0, requires_grad=True)
    tw = torch.tensor(w0, requires_grad=True)

    def hook(g):
        calls.append(1)
        return g * 2
    w.register_hook(hook)
    tw.register_hook(lambda g: g * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # kiln.compile's note that it runs eagerly
        with compiled_autograd.enable():
            for _ in range(3):
                (w * w).sum().backward()
    for _ in range(3):
        (tw * tw).sum().backward()
    assert len(calls) == 3
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), atol=1e-12)


def test_outside_the_block_backward_is_the_plain_engines():
    x = kiln.randn(3, requires_grad=True)
    with compiled_autograd.enable():
        assert compiled_autograd.compiled_autograd_enabled()
    assert not compiled_autograd.compiled_autograd_enabled()
    (x * x).sum().backward()
    assert counters["compiled_autograd"]["captures"] == 0
    assert compiled_autograd._enable is compiled_autograd.enable


def batchnorm_net(lib):
    return lib.nn.Sequential(lib.nn.Conv2d(3, 4, 3), lib.nn.BatchNorm2d(4), lib.nn.ReLU(),
                             lib.nn.AdaptiveAvgPool2d(1), lib.nn.Flatten(), lib.nn.Linear(4, 2))


def layernorm_net(lib):
    return lib.nn.Sequential(lib.nn.Linear(6, 8), lib.nn.LayerNorm(8), lib.nn.GELU(),
                             lib.nn.Linear(8, 2))


def encoder_layer(lib):
    return lib.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)


@pytest.mark.parametrize("make,shape", [(batchnorm_net, (2, 3, 6, 6)), (layernorm_net, (5, 6)),
                                        (encoder_layer, (2, 3, 8))])
def test_normalization_and_attention_layers_compile_and_match_torch(make, shape):
    kiln.manual_seed(1)
    model = make(kiln)
    twin = torch_twin(model, make(torch))
    rng = np.random.default_rng(9)
    made = []
    for _ in range(2):
        x = rng.standard_normal(shape).astype(np.float32)
        model.zero_grad()
        twin.zero_grad()
        with compiled_autograd.enable(counting_compiler(made)):
            model(kiln.tensor(x)).pow(2).sum().backward()
        twin(torch.from_numpy(x)).pow(2).sum().backward()
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), atol=1e-4, rtol=1e-4,
                                       err_msg=name)
    assert len(made) == 1
    (entry,) = compiled_entries(made)
    assert entry.program is not None and entry.calls == 1


def test_an_lstm_falls_back_to_the_plain_engine_with_a_warning():
    kiln.manual_seed(2)
    lstm = kiln.nn.LSTM(4, 5, batch_first=True)
    twin = torch_twin(lstm, torch.nn.LSTM(4, 5, batch_first=True))
    x = np.random.default_rng(10).standard_normal((2, 3, 4)).astype(np.float32)
    with compiled_autograd.enable():
        with pytest.warns(UserWarning, match="LstmSequenceBackward0 is an eager fast path"):
            lstm(kiln.tensor(x))[0].pow(2).sum().backward()
    twin(torch.from_numpy(x))[0].pow(2).sum().backward()
    assert_grads(lstm.named_parameters(), twin.parameters())
    assert counters["compiled_autograd"]["captures"] == 0


def test_a_multi_grad_hook_fires_on_every_backward():
    fired = []
    a0, b0 = np.random.default_rng(13).standard_normal((2, 3))
    a, b = (kiln.tensor(v, requires_grad=True) for v in (a0, b0))
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a0, b0))
    kiln.autograd.graph.register_multi_grad_hook((a, b), lambda grads: fired.append(grads))
    torch_fired = []
    torch.autograd.graph.register_multi_grad_hook((ta, tb), lambda g: torch_fired.append(g))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the notes saying it runs eagerly
        with compiled_autograd.enable():
            for _ in range(3):
                (a * b).sum().backward()
    for _ in range(3):
        (ta * tb).sum().backward()
    assert len(fired) == len(torch_fired) == 3
    for mine, theirs in zip(fired, torch_fired):
        for g, tg in zip(mine, theirs):
            np.testing.assert_allclose(g.numpy(), tg.numpy(), atol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), atol=1e-12)


def test_a_compiled_models_backward_is_not_retraced_and_gradients_stay_right():
    kiln.manual_seed(4)
    model = mlp(kiln)
    twin = torch_twin(model, mlp(torch))
    compiled = kiln.compile(model)
    x = np.random.default_rng(14).standard_normal((6, 10)).astype(np.float32)
    compiled(kiln.tensor(x))                    # the trace; the next call replays
    with compiled_autograd.enable():
        with pytest.warns(UserWarning, match="backward of a kiln.compile'd function"):
            compiled(kiln.tensor(x)).pow(2).sum().backward()
    twin(torch.from_numpy(x)).pow(2).sum().backward()
    assert_grads(model.named_parameters(), twin.parameters())


def test_hooks_made_anew_each_step_stop_capturing_at_the_recompile_limit():
    w0 = np.random.default_rng(15).standard_normal(3)
    w, tw = kiln.tensor(w0, requires_grad=True), torch.tensor(w0, requires_grad=True)
    limit = kiln._dynamo.config.recompile_limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with compiled_autograd.enable():
            for step in range(limit + 2):
                h = w * w
                h.register_hook(lambda g, step=step: g * (step + 1))
                h.sum().backward()
    for step in range(limit + 2):
        th = tw * tw
        th.register_hook(lambda g, step=step: g * (step + 1))
        th.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-12)
    assert counters["compiled_autograd"]["captures"] == limit
    assert sum(f"captured {limit} times with other hooks" in str(c.message)
               for c in caught) == 2


def test_a_grad_never_shares_memory_with_the_gradient_passed_in():
    w, tw = kiln.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    seed, tseed = kiln.ones(4), torch.ones(4)
    (tw + 0).backward(gradient=tseed)
    tw.grad.add_(1)                         # an optimizer's in-place write
    with compiled_autograd.enable():
        for _ in range(2):                  # the capture, then the replay
            w.grad = None
            (w + 0).backward(gradient=seed)
            w.grad.add_(1)
            np.testing.assert_array_equal(seed.numpy(), tseed.numpy())
            np.testing.assert_array_equal(w.grad.numpy(), tw.grad.numpy())


def test_a_fullgraph_compiler_raises_at_a_hook_that_breaks_the_graph():
    v = kiln.randn(3, requires_grad=True)
    tv = torch.from_numpy(v.detach().numpy()).requires_grad_()
    v.register_hook(lambda g: g * float(g.sum()))
    tv.register_hook(lambda g: g * float(g.sum()))
    with compiled_autograd.enable(kiln.compile(fullgraph=True)):
        with pytest.raises(kiln.compiler.GraphBreak, match="reads a tensor's value"):
            (v * v).sum().backward()
    assert v.grad is None
    (v * v).sum().backward()               # outside the block: the plain engine
    (tv * tv).sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), tv.grad.numpy(), rtol=1e-6)


def written_views(lib, x):
    y = x * 2
    y[:, 1].mul_(3)                          # in-place writes through views: CopySlices nodes
    y[0] = 0
    z = y.t().contiguous().view(-1)[2:9]
    return (z.exp() * z).sum() + y.unbind(0)[1].sum()


def test_in_place_writes_through_views_compile_and_match_torch():
    rng = np.random.default_rng(16)
    made = []
    for _ in range(3):
        x0 = rng.standard_normal((3, 4))
        x, tx = kiln.tensor(x0, requires_grad=True), torch.tensor(x0, requires_grad=True)
        with compiled_autograd.enable(counting_compiler(made)):
            written_views(kiln, x).backward()
        written_views(torch, tx).backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    (entry,) = compiled_entries(made)
    assert entry.program is not None and entry.calls == 2


def test_bfloat16_and_meta_graphs_run_on_the_plain_engine_with_a_warning():
    b0 = np.random.default_rng(17).standard_normal(5).astype(np.float32)
    b = kiln.tensor(b0, requires_grad=True)
    tb = torch.tensor(b0, requires_grad=True)
    with compiled_autograd.enable():
        with pytest.warns(UserWarning, match="bfloat16 gradient"):
            (b.to(kiln.bfloat16) * 3).sum().backward()
        m = kiln.empty(3, 4, device="meta", requires_grad=True)
        with pytest.warns(UserWarning, match="meta device"):
            (m * 2).sum().backward()
    (tb.to(torch.bfloat16) * 3).sum().backward()
    np.testing.assert_array_equal(b.grad.numpy(), tb.grad.numpy())
    assert m.grad.shape == (3, 4) and m.grad.device.type == "meta"
    assert counters["compiled_autograd"]["captures"] == 0
