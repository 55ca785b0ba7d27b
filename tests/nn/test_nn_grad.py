"""kiln.nn.grad (conv{1,2,3}d_input / _weight) against torch.nn.grad, and the custom-Function
pattern of PyTorch's "Fusing Convolution and Batch Norm" tutorial built on them."""

import numpy as np
import pytest
import torch

import kiln

CASES = [  # dims, input size, weight size, stride, padding, dilation, groups
    (1, (2, 4, 9), (6, 2, 3), 2, 1, 1, 2),
    (2, (2, 3, 7, 6), (4, 3, 3, 2), 1, 0, 1, 1),
    (2, (1, 4, 8, 8), (6, 2, 3, 3), (2, 1), (1, 2), (1, 2), 2),
    (3, (1, 2, 5, 4, 6), (3, 2, 2, 3, 2), 1, 1, 2, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[f"conv{c[0]}d-{i}" for i, c in enumerate(CASES)])
def test_conv_input_and_weight_gradients_match_torch(case):
    dims, xs, ws, stride, padding, dilation, groups = case
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    conv = getattr(torch.nn.functional, f"conv{dims}d")
    go = rng.standard_normal(tuple(conv(torch.tensor(x), torch.tensor(w), None, stride, padding,
                                        dilation, groups).shape))
    for which in ("input", "weight"):
        ours = getattr(kiln.nn.grad, f"conv{dims}d_{which}")
        theirs = getattr(torch.nn.grad, f"conv{dims}d_{which}")
        if which == "input":
            k = ours(xs, kiln.tensor(w), kiln.tensor(go), stride, padding, dilation, groups)
            t = theirs(xs, torch.tensor(w), torch.tensor(go), stride, padding, dilation, groups)
        else:
            k = ours(kiln.tensor(x), ws, kiln.tensor(go), stride, padding, dilation, groups)
            t = theirs(torch.tensor(x), ws, torch.tensor(go), stride, padding, dilation, groups)
        np.testing.assert_allclose(k.numpy(), t.numpy(), rtol=1e-10, atol=1e-12)


def _conv_function(lib):
    class Conv2D(lib.autograd.Function):
        @staticmethod
        def forward(ctx, X, weight):
            ctx.save_for_backward(X, weight)
            return lib.nn.functional.conv2d(X, weight)

        @staticmethod
        def backward(ctx, grad_out):
            X, weight = ctx.saved_tensors
            return (lib.nn.grad.conv2d_input(X.shape, weight, grad_out),
                    lib.nn.grad.conv2d_weight(X, weight.shape, grad_out))
    return Conv2D


def test_a_custom_conv_function_passes_gradcheck_and_gradgradcheck():
    conv = _conv_function(kiln)
    rng = np.random.default_rng(1)
    x = kiln.tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True)
    w = kiln.tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    assert kiln.autograd.gradcheck(conv.apply, (x, w))
    assert kiln.autograd.gradgradcheck(conv.apply, (x, w))


def test_wrong_sizes_are_named():
    with pytest.raises(RuntimeError, match="conv2d_input: grad_output has shape"):
        kiln.nn.grad.conv2d_input((1, 3, 5, 5), kiln.ones(2, 3, 3, 3), kiln.ones(1, 2, 4, 4))
    with pytest.raises(ValueError, match="conv2d_weight: expected a size of 4 dims"):
        kiln.nn.grad.conv2d_weight(kiln.ones(1, 3, 5, 5), (2, 3, 3), kiln.ones(1, 2, 3, 3))
