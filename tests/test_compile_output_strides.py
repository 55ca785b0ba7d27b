"""A compiled replay returns tensors laid out as eager's (and PyTorch's) are: the same strides as
the traced call gave, for each target, and a new input layout traced again."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln

TARGETS = ["c", "numpy", "triton"]


def _cases(T) -> dict:
    """name -> (function, arguments), the same in kiln (T = kiln) and in PyTorch (T = torch)."""
    F = T.nn.functional
    rng = np.random.default_rng(0)

    def a(*shape):
        return T.tensor(rng.standard_normal(shape).astype(np.float32))

    x, w = a(4, 4), a(4, 4)
    x3, x4 = a(2, 3, 4), a(2, 3, 4, 5)
    img, cw = a(2, 3, 6, 6), a(4, 3, 3, 3)
    return {
        "t of matmul": (lambda x, w: (x @ w).t(), (x, w)),
        "t times 2": (lambda x: x.t() * 2, (x,)),
        "the brief's four": (lambda x, w: ((x @ w).t(), x.t() * 2, x.permute(1, 0)[1:],
                                           x.expand(3, 4, 4) + 0), (x, w)),
        "permuted 3-D exp": (lambda x: x.permute(2, 0, 1).exp() + 1, (x3,)),
        "permuted 4-D product": (lambda x: x.permute(0, 2, 3, 1) * x.permute(0, 2, 3, 1),
                                 (x4,)),
        "permuted 4-D plus broadcast": (lambda x, b: x.permute(0, 3, 1, 2) + b, (x4, a(5, 1, 1))),
        "sum keepdim of transposed": (lambda x: x.t().sum(1, keepdim=True) * 2, (x,)),
        "sum keepdim of permuted": (lambda x: x.permute(2, 0, 1).sum(1, keepdim=True) * 2,
                                    (x3,)),
        "amax keepdim of permuted": (lambda x: x.permute(2, 1, 0).amax(0, keepdim=True) + 1,
                                     (x3,)),
        "slice of an intermediate": (lambda x: (x + 1)[:, 1:], (x,)),
        "slices of intermediates": (lambda x: ((x * 2)[1:], (x * 3).t()[1:], x * 4), (x,)),
        "expand of an intermediate, and a sum": (lambda x: ((x + 1).expand(3, 4, 4),
                                                            (x * 2).t() + 1), (x,)),
        "stack of transposed": (lambda x, w: T.stack([x.t(), w.t()]), (x, w)),
        "stack of transposed, doubled": (lambda x, w: T.stack([x.t(), w.t()]) * 2, (x, w)),
        "cat of transposed, scaled": (lambda x, w: T.cat([x.t(), w.t()], 1) * 3, (x, w)),
        "an output and its transpose": (lambda x: (lambda y: (y, y.t(), y.t() + 1))(x * 3),
                                        (x,)),
        "contiguous of transposed": (lambda x: (x.t() * 2).contiguous(), (x,)),
        "conv then relu": (lambda i, k: F.relu(F.conv2d(i, k, padding=1)), (img, cw)),
        "conv of a channels_last input, plus one": (
            lambda i, k: F.conv2d(i.contiguous(memory_format=T.channels_last), k) + 1,
            (img, cw)),
        "to channels_last": (lambda i: (i + 1).contiguous(memory_format=T.channels_last),
                             (img,)),
    }


# where kiln's eager layout is not PyTorch's (each a departure of eager mode, not of compiling:
# the replay is compared with kiln's eager); torch's strides in the comment
EAGER_NOT_TORCH = {
    # an eager conv's output is channels_last in kiln (ARCHITECTURE.md's departures), torch's
    # contiguous
    "conv then relu": "(144, 36, 6, 1)",
}


def _tensors(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def _strides(result) -> list:
    return [t.stride() for t in _tensors(result)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(_cases(kiln)))
def test_replay_has_eager_strides(name, target):
    fn, args = _cases(kiln)[name]
    torch_fn, torch_args = _cases(torch)[name]
    expected = torch_fn(*torch_args)
    eager = fn(*args)
    for e, t in zip(_tensors(eager), _tensors(expected)):
        np.testing.assert_allclose(e.numpy(), t.numpy(), rtol=1e-5, atol=1e-5)
    if name not in EAGER_NOT_TORCH:
        assert _strides(eager) == _strides(expected)
    compiled = kiln.compile(fn, backend=target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # replayed, not run eagerly
        for call in range(3):                       # the trace, then two replays
            result = compiled(*args)
            assert _strides(result) == _strides(eager), (call, name)
            assert [t.storage_offset() for t in _tensors(result)] == \
                [t.storage_offset() for t in _tensors(eager)]
            for r, e in zip(_tensors(result), _tensors(eager)):
                assert r.is_contiguous() == e.is_contiguous()
                np.testing.assert_allclose(r.numpy(), e.numpy(), rtol=1e-6, atol=1e-6)
    assert sum(e.calls for e in compiled.entries.values() if e.program is not None) == 2


@pytest.mark.parametrize("target", TARGETS)
def test_contiguous_result_views_as_in_eager(target):
    """Eager's contiguous result is contiguous replayed too: `.view` works on both."""
    x = kiln.randn(4, 4)
    compiled = kiln.compile(lambda x: (x.t() * 2).contiguous(), backend=target)
    for _ in range(3):
        out = compiled(x)
        assert out.is_contiguous()
        np.testing.assert_array_equal(out.view(16).numpy(), (x.t() * 2).reshape(16).numpy())


@pytest.mark.parametrize("target", TARGETS)
def test_a_transposed_input_is_traced_again(target):
    """The inputs' strides are part of the guard key: a call with a transposed input gets its
    own entry, whose results are laid out as eager lays them out for that input."""
    def f(x):
        return x * 2 + 1, x.permute(1, 0)[1:], x.sum(0, keepdim=True)

    compiled = kiln.compile(f, backend=target)
    x = kiln.randn(4, 5)
    xt = kiln.randn(5, 4).t()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a in (x, x, xt, xt, x, xt):
            result, eager = compiled(a), f(a)
            assert _strides(result) == _strides(eager)
            for r, e in zip(result, eager):
                np.testing.assert_allclose(r.numpy(), e.numpy(), rtol=1e-6, atol=1e-6)
    assert len(compiled.entries) == 2
    t = torch.from_numpy(xt.numpy())                # PyTorch's, of the same layout
    assert t.stride() == xt.stride() == (1, 4)
    assert _strides(f(xt)[:2]) == _strides(f(t)[:2]) == [(1, 4), (4, 1)]


@pytest.mark.parametrize("target", TARGETS)
def test_output_with_a_backward_keeps_eager_strides(target):
    """A transposed result of a compiled forward that requires grad: eager's strides, and its
    gradients those of eager."""
    rng = np.random.default_rng(1)
    x = kiln.tensor(rng.standard_normal((3, 4)).astype(np.float32))
    w = kiln.tensor(rng.standard_normal((4, 5)).astype(np.float32), requires_grad=True)

    def f(x, w):
        return (x @ w).t() * 2

    compiled = kiln.compile(f, backend=target)
    eager = f(x, w)
    eager.pow(2).sum().backward()
    expected = w.grad.numpy().copy()
    for _ in range(3):
        w.grad = None
        out = compiled(x, w)
        assert out.stride() == eager.stride() == (1, 5)
        np.testing.assert_allclose(out.detach().numpy(), eager.detach().numpy(), rtol=1e-6)
        out.pow(2).sum().backward()
        np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


def _grad_step(T, compiled: bool, target: str = "c"):
    """A transposed weight and a channels_last conv trained three steps (compiled: the whole
    step, zero_grad, backward and SGD's update): the parameters' strides, and per step each
    parameter's .grad strides and values, and the compiled function."""
    rng = np.random.default_rng(2)

    def a(*shape):
        return T.tensor(rng.standard_normal(shape).astype(np.float32))

    w = T.nn.Parameter(a(3, 4).t())
    conv = T.nn.Conv2d(3, 4, 3)
    with T.no_grad():
        conv.weight.copy_(a(4, 3, 3, 3))
        conv.bias.copy_(a(4))
    conv = conv.to(memory_format=T.channels_last)
    params = [w, conv.weight, conv.bias]
    opt = T.optim.SGD(params, lr=0.1)
    x, img = a(5, 4), a(2, 3, 6, 6)

    def step(x, img):
        opt.zero_grad()
        loss = (x @ w).pow(2).sum() + conv(img).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    if compiled:
        step = kiln.compile(step, backend=target)
    grads = []
    for _ in range(3):
        step(x, img)
        grads.append([(p.grad.stride(), p.grad.detach().numpy().copy()) for p in params])
    return [p.stride() for p in params], grads, step


def test_eager_grads_take_the_parameters_strides():
    """kiln's eager AccumulateGrad lays `.grad` out as its parameter, as PyTorch's does."""
    kiln_params, kiln_steps, _ = _grad_step(kiln, False)
    torch_params, torch_steps, _ = _grad_step(torch, False)
    assert kiln_params == torch_params == [(1, 4), (27, 1, 9, 3), (1,)]
    for ks, ts in zip(kiln_steps, torch_steps):
        assert [s for s, _ in ks] == [s for s, _ in ts]
        for (_, kg), (_, tg) in zip(ks, ts):
            np.testing.assert_allclose(kg, tg, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_compiled_step_grads_take_the_parameters_strides(target):
    """A compiled training step's `.grad`s: the parameters' strides, eager's values."""
    _, eager_steps, _ = _grad_step(kiln, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, steps, compiled = _grad_step(kiln, True, target)
    assert sum(e.calls for e in compiled.entries.values() if e.program is not None) >= 1
    for cs, es in zip(steps, eager_steps):
        assert [s for s, _ in cs] == [s for s, _ in es] == [(1, 4), (27, 1, 9, 3), (1,)]
        for (_, cg), (_, eg) in zip(cs, es):
            np.testing.assert_allclose(cg, eg, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_state_laid_out_anew_is_traced_again(target):
    """A tensor the function reads from Python state, laid out anew in place (`w.data = ...`
    of another layout): guarded by strides, so the replay's results follow eager's again."""
    w = kiln.randn(4, 4)

    def f(x):
        return w.t() * 2 + x

    compiled = kiln.compile(f, backend=target)
    x = kiln.randn(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(6):
            if i == 3:
                w.data = w.data.t().contiguous().t()
            result, eager = compiled(x), f(x)
            assert result.stride() == eager.stride() == ((1, 4) if i < 3 else (4, 1))
            np.testing.assert_allclose(result.numpy(), eager.numpy(), rtol=1e-6)
    assert len(compiled.entries) == 2


def test_compiled_autograd_grads_take_the_parameters_strides():
    """compiled_autograd's backward stores `.grad` laid out as the engine's: the parameter's
    strides (a transposed weight's gradient is transposed), PyTorch's values."""
    from kiln._dynamo import compiled_autograd

    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    x0 = rng.standard_normal((5, 4)).astype(np.float32)
    tw = torch.nn.Parameter(torch.tensor(w0).t())
    (torch.tensor(x0) @ tw).pow(2).sum().backward()
    w, x = kiln.nn.Parameter(kiln.tensor(w0).t()), kiln.tensor(x0)
    compiled_autograd.reset()
    try:
        for _ in range(3):
            w.grad = None
            with compiled_autograd.enable(kiln.compile):
                (x @ w).pow(2).sum().backward()
            assert w.grad.stride() == tw.grad.stride() == (1, 4)
            np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    finally:
        compiled_autograd.reset()


@pytest.mark.gpu
def test_cuda_replay_has_eager_strides():
    """On cuda tensors (Triton kernels, CuPy memory): eager's strides, eager's values, and a
    transposed parameter's `.grad` laid out as the parameter."""
    rng = np.random.default_rng(4)
    x = kiln.tensor(rng.standard_normal((4, 6)).astype(np.float32), device="cuda")
    w = kiln.nn.Parameter(kiln.tensor(rng.standard_normal((3, 6)).astype(np.float32),
                                      device="cuda").t())

    def f(x):
        return x.t() * 2, (x @ w).t() + 1, (x + 1)[:, 1:]

    compiled = kiln.compile(f)
    eager = f(x)
    eager[1].sum().backward()
    expected, w.grad = w.grad, None
    for _ in range(3):
        result = compiled(x)
        assert _strides(result) == _strides(eager) == [(1, 6), (1, 3), (6, 1)]
        for r, e in zip(result, eager):
            np.testing.assert_allclose(r.detach().cpu().numpy(), e.detach().cpu().numpy(),
                                       rtol=1e-5, atol=1e-5)
        w.grad = None
        result[1].sum().backward()
        assert w.grad.stride() == expected.stride() == w.stride() == (1, 6)
        np.testing.assert_allclose(w.grad.cpu().numpy(), expected.cpu().numpy(), rtol=1e-5)
