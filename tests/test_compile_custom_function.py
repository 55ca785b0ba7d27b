"""Custom autograd.Functions inside kiln.compile: traced without a graph break when forward and
backward are tensor ops (the backward's ops recorded while the backward graph is derived), so
the compiled step equals the eager one (values and gradients, several steps), and eager equals
torch; a backward that reads a value into Python, prints or assigns a global still breaks,
with a message naming its line, and gives eager's results."""

import types
import warnings

import numpy as np
import pytest
import torch

import kiln
from kiln.compiler import GraphBreak

RTOL = 1e-6


def _functions(lib):
    """The same custom Functions written against torch or kiln."""
    F = lib.nn.functional
    once_differentiable = lib.autograd.function.once_differentiable

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

    class OnceExp(Exp):
        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            y, = ctx.saved_tensors
            return g * y

    class ScaledPow(lib.autograd.Function):
        """scale * x ** p, with p and scale plain numbers kept on ctx."""

        @staticmethod
        def forward(ctx, x, p, scale):
            ctx.p, ctx.scale = p, scale
            ctx.rows = x.numel() / x.shape[0]          # a Python number from shapes
            ctx.save_for_backward(x)
            return scale * x ** p / ctx.rows

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return g * ctx.scale * ctx.p * x ** (ctx.p - 1) / ctx.rows, None, None

    class MulAdd(lib.autograd.Function):
        """x * y + y, each gradient computed only when needed."""

        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return x * y + y

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            gx = g * y if ctx.needs_input_grad[0] else None
            gy = g * (x + 1) if ctx.needs_input_grad[1] else None
            return gx, gy

    class RowMax(lib.autograd.Function):
        """Each row's max and its index (not differentiable); None for the index's gradient."""

        @staticmethod
        def forward(ctx, x):
            values, index = x.max(dim=1)
            ctx.mark_non_differentiable(index)
            ctx.set_materialize_grads(False)
            ctx.save_for_backward(index)
            ctx.shape = tuple(x.shape)
            return values, index

        @staticmethod
        def backward(ctx, g_values, g_index):
            assert g_index is None
            index, = ctx.saved_tensors
            grad = lib.zeros(ctx.shape, dtype=g_values.dtype)
            return grad.scatter(1, index[:, None], g_values[:, None])

    class FusedConvBN(lib.autograd.Function):
        """The tutorial's conv + batch norm (training mode, no affine) in one Function that saves
        the conv's input and recomputes the conv in backward."""

        @staticmethod
        def forward(ctx, X, weight, eps=1e-3):
            ctx.save_for_backward(X, weight)
            out = F.conv2d(X, weight)
            total = out.sum(dim=(0, 2, 3))
            n = out.numel() / out.size(1)
            sqrt_var = out.var(dim=(0, 2, 3), unbiased=True).sqrt()
            ctx.eps, ctx.sum, ctx.N, ctx.sqrt_var = eps, total, n, sqrt_var
            out = out - (total / n)[None, :, None, None]
            out /= (sqrt_var + eps)[None, :, None, None]
            return out

        @staticmethod
        def backward(ctx, grad_out):
            X, weight = ctx.saved_tensors
            Y = F.conv2d(X, weight)
            s, sv, n, eps = ctx.sum, ctx.sqrt_var, ctx.N, ctx.eps

            def pc(t):
                return t[None, :, None, None]
            tmp = -((Y - pc(s) / n) * grad_out).sum(dim=(0, 2, 3))
            d_var = tmp / (sv + eps) ** 2 / (2 * sv)
            d_mean_dx = pc(-(grad_out / pc(sv + eps)).sum(dim=(0, 2, 3)) / n)
            grad = Y * pc(d_var * n)
            grad += pc(-d_var * s)
            grad *= 2 / ((n - 1) * n)
            grad += d_mean_dx
            grad *= pc(sv + eps)
            grad += grad_out
            grad /= pc(sv + eps)
            grad_w = F.conv2d(X.transpose(0, 1), grad.transpose(0, 1)).transpose(0, 1)
            grad_x = F.conv_transpose2d(grad, weight)
            return grad_x, grad_w, None

    class Cube(lib.autograd.Function):
        """x ** 3 with a differentiable backward (the double-backward tutorial's)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return 3 * x * x * g

    class MulConst(lib.autograd.Function):
        """forward without ctx, setup_context beside it."""

        @staticmethod
        def forward(x, c):
            return x * c

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.c = inputs[1]

        @staticmethod
        def backward(ctx, g):
            return g * ctx.c, None

    return types.SimpleNamespace(**{c.__name__: c for c in (
        Exp, OnceExp, ScaledPow, MulAdd, RowMax, FusedConvBN, Cube, MulConst)})


_RNG = np.random.default_rng(0)
_W = _RNG.normal(size=(4, 5)) * 0.5
_XS = [_RNG.normal(size=(4, 5)) for _ in range(3)]


def _losses(lib):
    """loss(fns, w, x) per case: what the compiled function computes."""
    return {
        "exp": lambda f, w, x: (f.Exp.apply(x * w) * 2).sum(),
        "once_differentiable": lambda f, w, x: f.OnceExp.apply(w - x).sum(),
        "ctx_attributes": lambda f, w, x: f.ScaledPow.apply(w + x, 3, 0.5).sum(),
        "needs_input_grad": lambda f, w, x: f.MulAdd.apply(x, w).square().sum(),
        "non_differentiable_output": lambda f, w, x: (
            f.RowMax.apply(w * x)[0].square().sum() +
            f.RowMax.apply(w * x)[1].to(lib.float64).sum()),
        "setup_context": lambda f, w, x: (f.MulConst.apply(w, 1.5) * x).exp().sum(),
        "double_backward": lambda f, w, x: _gradient_penalty(lib, f.Cube, w, x),
    }


def _gradient_penalty(lib, Cube, w, x):
    """y + |dy/dw|^2: the gradient, through Cube's backward, is differentiated again."""
    y = Cube.apply(w * x).sum()
    g, = lib.autograd.grad(y, w, create_graph=True)
    return g.square().sum() + y


def _run(lib, case, compiled, inside=False):
    """Three steps of `case`: losses and w's gradients. With `inside`, the compiled function
    also runs backward and an SGD step (a training step); else it returns the loss, whose
    backward runs outside (the compiled backward)."""
    fns = _functions(lib)
    loss_of = _losses(lib)[case]
    w = lib.tensor(_W.copy(), requires_grad=True)
    opt = lib.optim.SGD([w], lr=0.1)

    def step(x):
        loss = loss_of(fns, w, x)
        if inside:
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss
    if compiled:
        step = kiln.compile(step, fullgraph=True)
    losses, grads = [], []
    for data in _XS:
        if not inside:
            opt.zero_grad()
        loss = step(lib.tensor(data))
        if not inside:
            loss.backward()
            grads.append(w.grad.numpy().copy())
            opt.step()
        else:
            grads.append(w.grad.numpy().copy())
        losses.append(loss.item())
    return np.array(losses), np.array(grads)


@pytest.mark.parametrize("inside", [False, True], ids=["return_loss", "train_step"])
@pytest.mark.parametrize("case", list(_losses(kiln)))
def test_compiled_equals_eager_equals_torch(case, inside):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no fallback warning either
        compiled = _run(kiln, case, compiled=True, inside=inside)
    eager = _run(kiln, case, compiled=False, inside=inside)
    reference = _run(torch, case, compiled=False, inside=inside)
    for c, e, t in zip(compiled, eager, reference):
        np.testing.assert_allclose(c, e, rtol=RTOL)
        np.testing.assert_allclose(e, t, rtol=RTOL)


def test_the_backward_is_in_the_backward_graph():
    Exp = _functions(kiln).Exp
    w = kiln.tensor(_W.copy(), requires_grad=True)

    @kiln.compile(fullgraph=True)
    def f(x):
        return Exp.apply(x * w).sum()
    for data in _XS[:2]:
        f(kiln.tensor(data)).backward()
    graph = next(iter(f.entries.values())).traced.graph
    scopes = {s for n in graph.nodes for s in n.scope}
    assert {"Exp", "backward of Exp"} <= scopes
    assert [n.op for n in graph.nodes if "backward of Exp" in n.scope] == ["mul"]


def _conv_bn_run(lib, fused_fn, compiled, initial=None):
    """The tutorial's net (fused conv+bn, relu, linear) trained with SGD by a step that
    returns its loss."""
    F = lib.nn.functional
    lib.manual_seed(0)
    weight = lib.nn.Parameter(lib.randn(3, 2, 3, 3, dtype=lib.float64) * 0.3)
    fc = lib.nn.Linear(3 * 4 * 4, 5, dtype=lib.float64)
    if initial is not None:
        with lib.no_grad():
            weight.copy_(lib.tensor(initial[0]))
            fc.weight.copy_(lib.tensor(initial[1]))
            fc.bias.copy_(lib.tensor(initial[2]))
    opt = lib.optim.SGD([weight, *fc.parameters()], lr=0.05, momentum=0.9)

    def train_step(x, target):
        opt.zero_grad()
        h = F.relu(fused_fn.apply(x, weight, 1e-3))
        loss = F.cross_entropy(fc(h.flatten(1)), target)
        loss.backward()
        opt.step()
        return loss
    if compiled:
        train_step = kiln.compile(train_step, fullgraph=True)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 2, 6, 6))
    target = rng.integers(0, 5, size=6)
    losses = [train_step(lib.tensor(x), lib.tensor(target)).item() for _ in range(4)]
    state = [weight.detach().numpy().copy(), fc.weight.detach().numpy().copy(),
             fc.bias.detach().numpy().copy()]
    return np.array(losses), state


def test_conv_bn_fusion_training_step():
    t_losses, t_state = _conv_bn_run(torch, _functions(torch).FusedConvBN, False)
    torch.manual_seed(0)
    initial = [(torch.randn(3, 2, 3, 3, dtype=torch.float64) * 0.3).numpy()]
    fc = torch.nn.Linear(48, 5, dtype=torch.float64)
    initial += [fc.weight.detach().numpy(), fc.bias.detach().numpy()]
    fused = _functions(kiln).FusedConvBN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c_losses, c_state = _conv_bn_run(kiln, fused, True, initial)
    e_losses, e_state = _conv_bn_run(kiln, fused, False, initial)
    np.testing.assert_allclose(c_losses, e_losses, rtol=RTOL)
    np.testing.assert_allclose(e_losses, t_losses, rtol=RTOL)
    for c, e, t in zip(c_state, e_state, t_state):
        np.testing.assert_allclose(c, e, rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(e, t, rtol=RTOL, atol=1e-12)
    assert c_losses[-1] < c_losses[0]


# ----------------------------------------------------------------------------- what still breaks

def _effectful_exp(effect):
    """Exp whose backward also does `effect(g)`."""
    class Exp(kiln.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            y, = ctx.saved_tensors
            effect(g)
            return g * y
    return Exp


def _steps(Exp, compiled: bool, inside: bool = False):
    w = kiln.tensor(_W.copy(), requires_grad=True)

    def f(x):
        loss = Exp.apply(x * w).sum()
        if inside:
            loss.backward()
        return loss
    if compiled:
        f = kiln.compile(f)
    out = []
    for data in _XS:
        w.grad = None
        loss = f(kiln.tensor(data))
        if not inside:
            loss.backward()
        out.append((loss.item(), w.grad.numpy().copy()))
    return out


def _assert_same(a, b):
    for (la, ga), (lb, gb) in zip(a, b):
        np.testing.assert_allclose(la, lb, rtol=RTOL)
        np.testing.assert_allclose(ga, gb, rtol=RTOL)


@pytest.mark.parametrize("inside", [False, True], ids=["return_loss", "train_step"])
def test_item_in_backward_is_a_graph_break(inside):
    seen = []
    Exp = _effectful_exp(lambda g: seen.append(g.sum().item()))
    with pytest.warns(UserWarning, match=r"Tensor\.item\(\) reads a tensor's value into Python "
                      r"\(data-dependent control flow\), in the backward of Exp .*"
                      r"test_compile_custom_function\.py:\d+; this function runs eagerly"):
        compiled = _steps(Exp, True, inside)
    assert len(seen) == 3          # once per backward, as eager: the traced run adds none
    _assert_same(compiled, _steps(Exp, False, inside))

    @kiln.compile(fullgraph=True)
    def f(x):
        return Exp.apply(x).sum()
    with pytest.raises(GraphBreak, match="in the backward of Exp"):
        f(kiln.ones(3, requires_grad=True))


def test_print_in_backward_is_a_graph_break_printed_once_per_backward(capsys):
    Exp = _effectful_exp(lambda g: print("backward ran"))
    with pytest.warns(UserWarning, match="print.*in the backward of Exp"):
        compiled = _steps(Exp, True)
    assert capsys.readouterr().out == "backward ran\n" * 3
    _assert_same(compiled, _steps(Exp, False))


CALLS = 0
SCALE = 2.0


def _count(g):
    global CALLS
    CALLS += 1


def test_global_assigned_in_backward_is_a_graph_break_counted_as_eager():
    global CALLS
    CALLS = 0
    Exp = _effectful_exp(_count)
    with pytest.warns(UserWarning, match="changes .*CALLS"):
        compiled = _steps(Exp, True)
    assert CALLS == 3
    _assert_same(compiled, _steps(Exp, False))


class _ScaledGrad(kiln.autograd.Function):
    """Identity forward; backward multiplies by the global SCALE."""

    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        return g * SCALE


def test_global_read_in_backward_is_guarded():
    global SCALE
    w = kiln.tensor([1.0, 2.0], requires_grad=True)

    @kiln.compile(fullgraph=True)
    def f(x):
        return (_ScaledGrad.apply(w) * x).sum()
    try:
        for scale in (2.0, 2.0, 3.0, 3.0):
            SCALE = scale
            w.grad = None
            f(kiln.tensor([1.0, 1.0])).backward()
            np.testing.assert_allclose(w.grad.numpy(), [scale, scale])
    finally:
        SCALE = 2.0
    assert len(f.entries) == 2          # SCALE's change made a new trace


class _ScaledForward(kiln.autograd.Function):
    """x * SCALE, with the plain gradient."""

    @staticmethod
    def forward(ctx, x):
        return x * SCALE

    @staticmethod
    def backward(ctx, g):
        return g


def test_global_read_in_forward_is_guarded():
    global SCALE

    @kiln.compile(fullgraph=True)
    def f(x):
        return _ScaledForward.apply(x).sum()
    try:
        for scale in (2.0, 3.0, 3.0):
            SCALE = scale
            assert f(kiln.tensor([1.0, 1.0])).item() == 2 * scale
    finally:
        SCALE = 2.0
    assert len(f.entries) == 2


def test_mark_dirty_is_still_a_graph_break():
    class AddOne(kiln.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.add_(1)
            ctx.mark_dirty(x)
            return x

        @staticmethod
        def backward(ctx, g):
            return g

    @kiln.compile(fullgraph=True)
    def f(w):
        return AddOne.apply(w * 1.0).sum()
    with pytest.raises(GraphBreak, match="marks an input dirty"):
        f(kiln.ones(3, requires_grad=True))


@pytest.mark.parametrize("inside", [False, True], ids=["return_loss", "train_step"])
def test_sparse_embedding_breaks_and_equals_eager(inside):
    """nn.Embedding(sparse=True)'s custom Function returns a sparse gradient, which compiled
    code (dense) would change: a graph break; the step gives eager's losses and a sparse grad."""
    def run(compiled):
        kiln.manual_seed(0)
        emb = kiln.nn.Embedding(10, 4, sparse=True, dtype=kiln.float64)
        opt = kiln.optim.SGD(emb.parameters(), lr=0.1)

        def step(ids):
            opt.zero_grad()
            loss = (emb(ids) ** 2).sum()
            if inside:
                loss.backward()
                opt.step()
            return loss
        if compiled:
            step = kiln.compile(step)
        losses = []
        for _ in range(3):
            loss = step(kiln.tensor([[1, 2, 2, 0], [3, 1, 0, 5]]))
            if not inside:
                loss.backward()
                assert emb.weight.grad.is_sparse
                opt.step()
            losses.append(loss.item())
        return losses, emb.weight.detach().numpy()
    with pytest.warns(UserWarning, match="sparse"):
        c_losses, c_weight = run(True)
    e_losses, e_weight = run(False)
    np.testing.assert_allclose(c_losses, e_losses, rtol=RTOL)
    np.testing.assert_allclose(c_weight, e_weight, rtol=RTOL)


def test_function_returning_its_parameter_input():
    """An identity Function returning its input itself (a Parameter): a new tensor, traced."""
    class Identity(kiln.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x

        @staticmethod
        def backward(ctx, g):
            return g * 3

    def run(compiled):
        w = kiln.nn.Parameter(kiln.tensor([1.0, -2.0]))

        def f(x):
            return (Identity.apply(w) * x).sum()
        if compiled:
            f = kiln.compile(f, fullgraph=True)
        grads = []
        for k in range(3):
            w.grad = None
            f(kiln.tensor([1.0, 2.0]) * k).backward()
            grads.append(w.grad.numpy().copy())
        return grads
    np.testing.assert_allclose(run(True), run(False), rtol=RTOL)


def test_float16_conv_stays_eager_and_equals_eager():
    """kiln's float16 CPU conv2d rounds step by step as PyTorch's kernel does, in a custom
    Function kiln keeps out of traces (`_eager_only`): a graph break, eager's exact numbers."""
    def run(compiled):
        kiln.manual_seed(0)
        conv = kiln.nn.Conv2d(2, 3, 3).half()
        opt = kiln.optim.SGD(conv.parameters(), lr=0.1)

        def step(x):
            opt.zero_grad()
            loss = conv(x).float().square().mean()
            loss.backward()
            opt.step()
            return loss
        if compiled:
            step = kiln.compile(step)
        rng = np.random.default_rng(0)
        losses = [step(kiln.tensor(rng.normal(size=(2, 2, 6, 6)).astype(np.float16))).item()
                  for _ in range(3)]
        return losses, conv.weight.detach().float().numpy()
    with pytest.warns(UserWarning, match="_HalfConv2d rounds float16"):
        c_losses, c_weight = run(True)
    e_losses, e_weight = run(False)
    np.testing.assert_array_equal(c_losses, e_losses)
    np.testing.assert_array_equal(c_weight, e_weight)


@pytest.mark.parametrize("source", ["kiln", "numpy"])
def test_random_draw_in_backward_is_a_graph_break_drawn_as_eager(source):
    """A backward that draws random numbers: a break, and the traced extra run leaves every
    stream where it was, so the stream ends where eager's does."""
    def draw(g):
        kiln.rand(1) if source == "kiln" else np.random.rand()

    def run(compiled):
        kiln.manual_seed(3)
        np.random.seed(3)
        out = _steps(_effectful_exp(draw), compiled)
        return out, (float(kiln.rand(1)), np.random.rand())
    with pytest.warns(UserWarning, match="random"):
        compiled, c_next = run(True)
    eager, e_next = run(False)
    _assert_same(compiled, eager)
    assert c_next == e_next
