"""Ops whose kiln implementations once read values into Python now trace: under
`kiln.compile(fullgraph=True)` (which raises on a graph break) the replay equals eager, and
eager equals torch, on inputs the OpInfo samples miss (ties, NaNs, a data-derived range)."""

import warnings

import numpy as np
import pytest
import torch

import kiln


def _compiled_equals_eager(fn, *args):
    """The third call of `fn` compiled without a break (a replay) equals eager, bit for bit;
    returns eager's result."""
    compiled = kiln.compile(fn, fullgraph=True)
    for _ in range(3):
        out = compiled(*args)
    eager = fn(*args)
    outs, eagers = (out, eager) if isinstance(out, tuple) else ((out,), (eager,))
    for a, b in zip(outs, eagers):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    return eager


@pytest.mark.parametrize("bins,lo,hi", [(7, 0, 0), (5, -1.0, 1.5), (4, 2.0, 2.0)])
def test_histc(bins, lo, hi):
    rng = np.random.default_rng(0)
    data = np.round(rng.normal(size=(6, 5)) * 4) / 4          # values on bin edges
    eager = _compiled_equals_eager(lambda x: kiln.histc(x, bins, lo, hi),
                                   kiln.tensor(data.astype(np.float32)))
    want = torch.histc(torch.tensor(data, dtype=torch.float32), bins, lo, hi)
    np.testing.assert_array_equal(eager.numpy(), want.numpy())


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_histc_in_the_inputs_arithmetic(dtype):
    """PyTorch bins by (x - lo) * bins / (hi - lo) rounded op by op in x's type: values near an
    edge land in the bin torch picks (these data caught kiln's old (x - lo) * (bins / width))."""
    for seed in (1, 7):
        data = np.round(np.random.default_rng(seed).normal(size=200) * 7, 1)
        for lo, hi in ((0, 0), (-1.3, 2.7)):
            eager = _compiled_equals_eager(lambda x: kiln.histc(x, 23, lo, hi),
                                           kiln.tensor(data, dtype=getattr(kiln, dtype)))
            want = torch.histc(torch.tensor(data, dtype=getattr(torch, dtype)), 23, lo, hi)
            np.testing.assert_array_equal(eager.numpy(), want.numpy())


def test_histc_of_constant_data_widens_the_range():
    x = np.full(4, 3.0, np.float32)
    eager = _compiled_equals_eager(lambda t: kiln.histc(t, 4), kiln.tensor(x))
    np.testing.assert_array_equal(eager.numpy(), torch.histc(torch.tensor(x), 4).numpy())


@pytest.mark.parametrize("name", ["cummax", "cummin"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_cummax_cummin_ties_and_nans(name, dtype):
    rng = np.random.default_rng(1)
    data = rng.integers(-2, 3, size=(4, 9)).astype(np.float32)
    data[rng.random(data.shape) < 0.2] = np.nan                 # repeated NaNs: the last wins
    data = data.astype(dtype) if dtype is np.float32 else np.nan_to_num(data).astype(dtype)
    for dim in (0, 1):
        eager = _compiled_equals_eager(lambda t: getattr(kiln, name)(t, dim), kiln.tensor(data))
        want = getattr(torch, name)(torch.tensor(data), dim)
        np.testing.assert_array_equal(eager[0].numpy(), want[0].numpy())
        np.testing.assert_array_equal(eager[1].numpy(), want[1].numpy())


def test_cummax_gradient_compiled():
    data = np.array([[1.0, 3.0, 3.0, 2.0, 5.0], [0.0, -1.0, 4.0, 4.0, 1.0]])

    def step(x):
        values, _ = kiln.cummax(x, 1)
        (values * kiln.arange(5.0)).sum().backward()
        return values

    x = kiln.tensor(data, requires_grad=True)
    _compiled_equals_eager(step, x)
    t = torch.tensor(data, requires_grad=True)
    (torch.cummax(t, 1)[0] * torch.arange(5.0)).sum().backward()
    x.grad = None
    step(x)
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sym", [True, False])
def test_kaiser_windows(dtype, sym):
    for M, beta in ((9, 12.0), (16, 0.5), (2, 3.3)):
        eager = _compiled_equals_eager(lambda: kiln.signal.windows.kaiser(
            M, beta=beta, sym=sym, dtype=getattr(kiln, dtype)))
        want = torch.signal.windows.kaiser(M, beta=beta, sym=sym, dtype=getattr(torch, dtype))
        np.testing.assert_allclose(eager.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
        eager = _compiled_equals_eager(lambda: kiln.kaiser_window(
            M, periodic=not sym, beta=beta, dtype=getattr(kiln, dtype)))
        want = torch.kaiser_window(M, periodic=not sym, beta=beta, dtype=getattr(torch, dtype))
        np.testing.assert_allclose(eager.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


def _loss_and_grad(fn, x, *rest):
    """fn's loss and the gradient of x, compiled with no break and eager, kiln against torch."""
    def step(x, *rest):
        loss = fn(kiln, x, *rest)
        loss.backward()
        return loss

    xt = torch.tensor(x, requires_grad=True)
    want = fn(torch, xt, *(torch.tensor(r) for r in rest))
    want.backward()
    xk = kiln.tensor(x, requires_grad=True)
    kargs = [kiln.tensor(r) for r in rest]
    compiled = kiln.compile(step, fullgraph=True)
    for run in (compiled, compiled, compiled, step):        # the last: eager
        xk.grad = None
        out = run(xk, *kargs)
        np.testing.assert_allclose(out.detach().numpy(), want.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(xk.grad.numpy(), xt.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin_loss(p):
    rng = np.random.default_rng(2)
    x, y, w = rng.normal(size=(5, 4)), np.array([0, 3, 1, 1, 2]), rng.random(4)
    _loss_and_grad(lambda lib, x, y, w: lib.nn.functional.multi_margin_loss(
        x, y, p=p, margin=0.7, weight=w), x, y, w)


def test_multilabel_margin_loss():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5))
    y = np.array([[3, 0, -1, 1, 2], [1, 1, 4, -1, -1], [-1, 2, 2, 2, 2], [4, 3, 2, 1, 0]])
    _loss_and_grad(lambda lib, x, y: lib.nn.functional.multilabel_margin_loss(x, y), x, y)


def test_multilabel_margin_loss_refuses_out_of_range_targets_compiled():
    """A replay's bounds check raises PyTorch's RuntimeError kind; the function stays compiled."""
    loss = kiln.compile(kiln.nn.functional.multilabel_margin_loss, fullgraph=True)
    x = kiln.randn(2, 4)
    for _ in range(2):
        loss(x, kiln.tensor([[0, 1, -1, 3], [2, -1, 0, 0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no fallback to eager
        with pytest.raises(RuntimeError, match="multilabel_margin_loss: target.* 4 is out of bounds"):
            loss(x, kiln.tensor([[0, 1, -1, 4], [2, -1, 0, 0]]))
    (entry,) = loss.entries.values()
    assert entry.program is not None


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fractional_max_pool(dims, dtype):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3) + (9, 7, 8)[:dims])
    u = rng.random((2, 3, dims))
    name = f"fractional_max_pool{dims}d"

    def pool(lib, x, u):
        return getattr(lib.nn.functional, name)(x, 2, output_size=(4, 3, 5)[:dims],
                                                return_indices=True, _random_samples=u)

    kd, td = getattr(kiln, dtype), getattr(torch, dtype)
    eager = _compiled_equals_eager(lambda x, u: pool(kiln, x, u), kiln.tensor(x, dtype=kd),
                                   kiln.tensor(u, dtype=kd))
    want = pool(torch, torch.tensor(x, dtype=td), torch.tensor(u, dtype=td))
    np.testing.assert_array_equal(eager[0].numpy(), want[0].numpy())
    np.testing.assert_array_equal(eager[1].numpy(), want[1].numpy())


def test_fractional_max_pool_draws_its_samples_like_eager():
    """Without `_random_samples` each call draws them: a replay draws eager's numbers."""
    pool = lambda x: kiln.nn.functional.fractional_max_pool2d(x, 3, output_ratio=0.5)
    compiled = kiln.compile(pool, fullgraph=True)
    x = kiln.randn(2, 3, 10, 12)
    for seed in range(3):
        kiln.manual_seed(seed)
        out = compiled(x)
        kiln.manual_seed(seed)
        np.testing.assert_array_equal(out.numpy(), pool(x).numpy())


def _ctc_case(padded: bool, lengths_as_tensors: bool):
    rng = np.random.default_rng(5)
    T, N, C, S = 7, 3, 5, 4
    logits = rng.normal(size=(T, N, C))
    tgt_lengths = np.array([4, 0, 2])               # an empty target among them
    in_lengths = np.array([7, 5, 6])
    if padded:
        targets = rng.integers(1, C, size=(N, S))
        targets[0, 1] = targets[0, 2]                # a repeated label: no skip between them
    else:
        targets = rng.integers(1, C, size=int(tgt_lengths.sum()))
    wrap = (lambda lib, v: lib.tensor(v)) if lengths_as_tensors else (lambda lib, v: list(v))
    return logits, targets, in_lengths, tgt_lengths, wrap


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("lengths_as_tensors", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_ctc_loss(padded, lengths_as_tensors, reduction):
    logits, targets, il, tl, wrap = _ctc_case(padded, lengths_as_tensors)

    def fn(lib, x, y):
        lp = x.log_softmax(2)
        return lib.nn.functional.ctc_loss(lp, y, wrap(lib, il), wrap(lib, tl),
                                          reduction=reduction, zero_infinity=True).sum()

    _loss_and_grad(fn, logits, targets)


def test_ctc_loss_unbatched():
    logits, targets, il, tl, _ = _ctc_case(True, True)
    _loss_and_grad(lambda lib, x, y: lib.nn.functional.ctc_loss(
        x[:, 0].log_softmax(1), y[0], lib.tensor(il[:1]), lib.tensor(tl[:1]),
        reduction="sum"), logits, targets)


def test_in_place_activation_on_a_contiguous_copy_of_a_conv_output():
    """pix2pix's U-Net: a LeakyReLU(inplace=True) on an InstanceNorm2d of a conv's output, whose
    row-major copy was a NumPy view of a private array, which the trace took for a view of
    another tensor (a graph break); its value and gradients are torch's."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = (0.3 * rng.standard_normal((8, 3, 3, 3))).astype(np.float32)

    def step(lib, x, w):
        h = lib.nn.functional.instance_norm(lib.nn.functional.conv2d(x, w, padding=1))
        y = lib.nn.functional.leaky_relu(h, 0.2, inplace=True)
        loss = (lib.cat([y, h * 2], 1) ** 2).sum()
        loss.backward()
        return loss

    tw = torch.tensor(w, requires_grad=True)
    want = step(torch, torch.tensor(x), tw)
    kw = kiln.tensor(w, requires_grad=True)
    compiled = kiln.compile(lambda x: step(kiln, x, kw), fullgraph=True)
    for _ in range(2):                  # the trace, then a replay
        kw.grad = None
        got = compiled(kiln.tensor(x))
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-5)
        np.testing.assert_allclose(kw.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_in_place_relu_on_a_conv_output_of_one_pixel():
    """A U-Net's innermost conv gives a 1x1 map, a channels-last view of the conv's fresh
    product that no tensor can reach: the trace took it for a view of another tensor and broke
    on ReLU(inplace=True); a write through as_strided of a traced tensor still breaks."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 2, 2)).astype(np.float32)
    w = (0.3 * rng.standard_normal((16, 8, 4, 4))).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)

    def step(lib, x, w):
        h = lib.nn.functional.conv2d(x, w, lib.tensor(b), stride=2, padding=1)
        y = lib.nn.functional.relu(h, inplace=True)
        loss = (y * lib.arange(16.0).reshape(1, 16, 1, 1)).sum()
        loss.backward()
        return loss

    tw = torch.tensor(w, requires_grad=True)
    want = step(torch, torch.tensor(x), tw)
    kw = kiln.tensor(w, requires_grad=True)
    compiled = kiln.compile(lambda x: step(kiln, x, kw), fullgraph=True)
    for _ in range(2):
        kw.grad = None
        got = compiled(kiln.tensor(x))
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-5)
        np.testing.assert_allclose(kw.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-5)

    def strided_write(x):
        y = x * 1
        y.as_strided((2, 2), (1, 2)).add_(1)
        return y.sum()

    with pytest.raises(Exception, match="in-place write to a view"):
        kiln.compile(strided_write, fullgraph=True)(kiln.tensor(x[0, 0]))


def test_crop_runs_found_by_unique_consecutive_of_python_sizes():
    """DINO's MultiCropWrapper groups same-sized crops by `unique_consecutive` and `cumsum` of a
    tensor of their Python sizes, then slices the list of crops at those ends: integer ops on
    constants are constants, read into Python without a graph break (the read broke the
    trace before); a tensor computed from the inputs still breaks."""
    rng = np.random.default_rng(2)
    crops = [rng.standard_normal((2, 3, s, s)).astype(np.float32) for s in (8, 8, 4, 4, 4)]
    w = rng.standard_normal((5, 3)).astype(np.float32)

    def wrapper(lib, x, w):
        idx_crops = lib.cumsum(lib.unique_consecutive(
            lib.tensor([inp.shape[-1] for inp in x]), return_counts=True)[1], 0)
        start_idx, output = 0, lib.empty(0)
        for end_idx in idx_crops:
            pooled = lib.cat(x[start_idx:end_idx]).mean((2, 3))
            output = lib.cat((output, pooled @ w.T))
            start_idx = end_idx
        return output

    want = wrapper(torch, [torch.tensor(c) for c in crops], torch.tensor(w))
    compiled = kiln.compile(lambda x: wrapper(kiln, x, kiln.tensor(w)), fullgraph=True)
    for _ in range(2):
        got = compiled([kiln.tensor(c) for c in crops])
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)

    def from_data(x):
        return x[:int(kiln.unique_consecutive(x.long()).numel())]

    with pytest.raises(Exception, match="unique_consecutive"):
        kiln.compile(from_data, fullgraph=True)(kiln.tensor([1.0, 1.0, 2.0]))


def test_unique_of_python_data_is_a_constant_as_unique_consecutive_is():
    """`torch.unique` of a tensor made from Python data: its values and counts are the same on
    every call, read into Python without a graph break; of an input, a break naming it."""
    def f(lib, x):
        values, counts = lib.unique(lib.tensor([3, 1, 3, 2]), return_counts=True)
        return x[:int(values.numel())] * int(counts.max())

    want = f(torch, torch.arange(6.0))
    compiled = kiln.compile(lambda x: f(kiln, x), fullgraph=True)
    for _ in range(2):
        np.testing.assert_array_equal(compiled(kiln.arange(6.0)).numpy(), want.numpy())
    with pytest.raises(Exception, match="unique"):
        kiln.compile(lambda x: x[:int(kiln.unique(x).numel())], fullgraph=True)(
            kiln.tensor([1.0, 1.0, 2.0]))
