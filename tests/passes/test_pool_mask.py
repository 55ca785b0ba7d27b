"""Compiled max pooling keeps one byte per output between forward and backward, not a K-byte
window mask: the partition saves the first maximum's rank, fusion recomputes the mask from it in
the backward kernels, and the gradients still equal eager's and PyTorch's (ties, NaN)."""

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F
from kiln.ir.schedule import FusedKernel

# (kernel, stride, padding): disjoint windows, overlapping ones with padding
GEOMETRIES = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))]


def _input(seed: int, nan: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    x[:, :, ::3, :] = np.round(x[:, :, ::3, :])       # ties (and after ReLU, all-zero windows)
    if nan:
        x[1, 2, 4, 5] = np.nan                       # one NaN: a maximum of every window it is in
    return x


def _torch_grads(x: np.ndarray, g: np.ndarray, kernel, stride, padding):
    t = torch.tensor(x, requires_grad=True)
    out = torch.nn.functional.max_pool2d(t.relu(), kernel, stride, padding)
    (out * torch.tensor(g)).sum().backward()
    return out.detach().numpy(), t.grad.numpy()


def _pool_loss(x, g, kernel, stride, padding):
    out = F.max_pool2d(x.relu(), kernel, stride, padding)
    return out, (out * g).sum()


@pytest.mark.parametrize("kernel,stride,padding", GEOMETRIES)
@pytest.mark.parametrize("nan", [False, True])
def test_the_partition_saves_one_byte_per_pool_output(kernel, stride, padding, nan):
    # backward outside the compiled function: a joint trace, split by the partition
    x = _input(0, nan)
    fn = kiln.compile(lambda x, g: _pool_loss(x, g, kernel, stride, padding), backend="c")
    out_shape = _torch_grads(x, np.zeros((1,), np.float32), kernel, stride, padding)[0].shape
    g = np.random.default_rng(1).standard_normal(out_shape).astype(np.float32)
    want_out, want_grad = _torch_grads(x, g, kernel, stride, padding)
    for f in (fn, fn, lambda x, g: _pool_loss(x, g, kernel, stride, padding)):
        leaf = kiln.tensor(x, requires_grad=True)
        out, loss = f(leaf, kiln.tensor(g))
        loss.backward()
        np.testing.assert_allclose(out.detach().numpy(), want_out, rtol=0, atol=0,
                                   equal_nan=True)
        np.testing.assert_allclose(leaf.grad.numpy(), want_grad, rtol=1e-6, atol=1e-6)
    (entry,) = fn.entries.values()
    saved = entry.partition.saved
    k = kernel[0] * kernel[1]
    assert any(v.dtype == kiln.uint8 and v.shape == out_shape for v in saved)
    mask_elements = k * int(np.prod(out_shape))         # the (K, N, C, oh, ow) window mask
    assert not any(int(np.prod(v.shape)) == mask_elements for v in saved), \
        [(v.shape, v.dtype) for v in saved]


# disjoint windows (the CNN rows' pools); with overlapping ones the window slices of the mask
# are sunk and cross as slices (and today's C renderer rejects the 3x3/2 pool's kernel)
@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0)),
                                                   ((4, 4), (4, 4), (0, 0))])
def test_a_compiled_step_keeps_no_window_mask_between_kernels(kernel, stride, padding):
    # backward inside the compiled function: one program; a matmul after the pool puts the
    # pool's backward in another kernel than its forward (as in a CNN), and the forward kernel
    # writes the rank (uint8, one per output) which the backward kernel compares against again
    x = _input(2, nan=False)
    rng = np.random.default_rng(3)
    scale0 = (rng.random(4) + 0.5).astype(np.float32)
    out_shape = _torch_grads(x, np.zeros((1,), np.float32), kernel, stride, padding)[0].shape
    w = rng.standard_normal((int(np.prod(out_shape[1:])), 5)).astype(np.float32)

    def make_step(lib, scale):
        def step(x):
            out = lib.nn.functional.max_pool2d((x * scale.reshape(1, 4, 1, 1)).relu(), kernel,
                                               stride, padding)
            loss = ((out.reshape(out.shape[0], -1) @ lib.tensor(w)) ** 2).sum()
            scale.grad = None
            loss.backward()
            return loss, scale.grad
        return step

    compiled = kiln.compile(make_step(kiln, kiln.tensor(scale0, requires_grad=True)),
                            backend="c")
    eager = make_step(kiln, kiln.tensor(scale0, requires_grad=True))
    want_loss, want_grad = make_step(torch, torch.tensor(scale0, requires_grad=True))(
        torch.tensor(x))
    for _ in range(3):                         # the trace, then replays
        got_loss, got_grad = compiled(kiln.tensor(x))
        eager_loss, eager_grad = eager(kiln.tensor(x))
        np.testing.assert_allclose(float(got_loss), float(eager_loss), rtol=1e-6)
        np.testing.assert_allclose(got_grad.numpy(), eager_grad.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(got_loss), want_loss.item(), rtol=1e-5)
        np.testing.assert_allclose(got_grad.numpy(), want_grad.numpy(), rtol=1e-4, atol=1e-4)
    entry = list(compiled.entries.values())[-1]
    k = kernel[0] * kernel[1]
    kernels = [s for s in entry.schedule.steps if isinstance(s, FusedKernel)]
    written = [v for s in kernels for v in s.outputs]
    assert any(v.dtype == kiln.uint8 and v.shape == out_shape for v in written)
    mask_elements = k * int(np.prod(out_shape))         # the (K, N, C, oh, ow) window mask
    assert not any(v.dtype in (kiln.bool, kiln.uint8) and int(np.prod(v.shape)) == mask_elements
                   for v in written), [(v.shape, v.dtype) for v in written]
    # the mask is computed again where the backward reads it
    read = [v for s in kernels for v in s.inputs]
    assert any(v.dtype == kiln.uint8 and v.shape == out_shape for v in read)
