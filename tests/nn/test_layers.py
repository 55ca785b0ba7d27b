"""Every layer against PyTorch: same weights (via state_dict), same outputs and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import build_pair, check_layer, kiln_to_torch_state

# (id, make(nn), inputs, call(layer, *inputs) or None)
CASES = [
    ("identity", lambda nn: nn.Identity(3, k=1), [(2, 3)], None),
    ("linear", lambda nn: nn.Linear(5, 4), [(3, 5)], None),
    ("linear_3d_nobias", lambda nn: nn.Linear(5, 4, bias=False), [(2, 3, 5)], None),
    ("linear_1d", lambda nn: nn.Linear(5, 4), [(5,)], None),
    ("bilinear", lambda nn: nn.Bilinear(3, 4, 5), [(2, 3), (2, 4)], None),
    ("flatten", lambda nn: nn.Flatten(), [(2, 3, 4, 5)], None),
    ("flatten_mid", lambda nn: nn.Flatten(1, 2), [(2, 3, 4, 5)], None),
    ("unflatten", lambda nn: nn.Unflatten(1, (2, 6)), [(3, 12)], None),
    ("conv1d", lambda nn: nn.Conv1d(3, 4, 3), [(2, 3, 10)], None),
    ("conv1d_stride_pad_dil", lambda nn: nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2,
                                                   groups=2), [(2, 4, 11)], None),
    ("conv1d_same", lambda nn: nn.Conv1d(2, 3, 4, padding="same"), [(2, 2, 9)], None),
    ("conv2d", lambda nn: nn.Conv2d(3, 4, 3), [(2, 3, 8, 8)], None),
    ("conv2d_pad", lambda nn: nn.Conv2d(1, 8, 3, padding=1), [(2, 1, 8, 8)], None),
    ("conv2d_stride", lambda nn: nn.Conv2d(3, 4, 3, stride=2, padding=1), [(2, 3, 9, 8)], None),
    ("conv2d_rect", lambda nn: nn.Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(1, 0)),
     [(2, 2, 7, 6)], None),
    ("conv2d_dilation", lambda nn: nn.Conv2d(2, 3, 3, dilation=2, padding=1), [(1, 2, 9, 9)],
     None),
    ("conv2d_groups", lambda nn: nn.Conv2d(4, 6, 3, groups=2, bias=False), [(2, 4, 6, 6)], None),
    ("conv2d_depthwise", lambda nn: nn.Conv2d(3, 3, 3, groups=3, padding=1), [(2, 3, 5, 5)],
     None),
    ("conv2d_same", lambda nn: nn.Conv2d(2, 3, 4, padding="same", dilation=2), [(1, 2, 9, 8)],
     None),
    ("conv2d_valid", lambda nn: nn.Conv2d(2, 3, 3, padding="valid"), [(1, 2, 5, 5)], None),
    ("conv2d_1x1", lambda nn: nn.Conv2d(4, 2, 1), [(2, 4, 3, 3)], None),
    ("conv2d_unbatched", lambda nn: nn.Conv2d(2, 3, 3), [(2, 5, 5)], None),
    ("conv2d_reflect", lambda nn: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
     [(1, 2, 5, 5)], None),
    ("conv2d_circular", lambda nn: nn.Conv2d(2, 3, 3, padding=2, padding_mode="circular"),
     [(1, 2, 5, 5)], None),
    ("conv_transpose2d", lambda nn: nn.ConvTranspose2d(3, 4, 3), [(2, 3, 5, 5)], None),
    ("conv_transpose2d_stride", lambda nn: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1,
                                                              output_padding=1),
     [(2, 3, 4, 5)], None),
    ("conv_transpose2d_groups_dil", lambda nn: nn.ConvTranspose2d(4, 6, (2, 3), stride=(1, 2),
                                                                  groups=2, dilation=2),
     [(1, 4, 4, 4)], None),
    ("conv_transpose2d_output_size", lambda nn: nn.ConvTranspose2d(2, 2, 3, stride=2),
     [(1, 2, 4, 4)], lambda layer, x: layer(x, output_size=[10, 10])),
    ("conv_transpose1d", lambda nn: nn.ConvTranspose1d(3, 2, 4, stride=3, padding=1),
     [(2, 3, 5)], None),
    ("maxpool2d", lambda nn: nn.MaxPool2d(2), [(2, 3, 8, 8)], None),
    ("maxpool2d_stride_pad", lambda nn: nn.MaxPool2d(3, stride=2, padding=1), [(2, 2, 9, 7)],
     None),
    ("maxpool2d_dilation_ceil", lambda nn: nn.MaxPool2d(2, stride=2, dilation=2,
                                                        ceil_mode=True), [(1, 2, 9, 9)], None),
    ("maxpool2d_ceil", lambda nn: nn.MaxPool2d(3, stride=2, ceil_mode=True), [(1, 2, 8, 8)],
     None),
    ("maxpool2d_indices", lambda nn: nn.MaxPool2d(3, 2, 1, return_indices=True),
     [(2, 2, 7, 6)], None),
    ("maxpool1d", lambda nn: nn.MaxPool1d(3, 2, 1), [(2, 3, 9)], None),
    ("avgpool2d", lambda nn: nn.AvgPool2d(2), [(2, 3, 8, 8)], None),
    ("avgpool2d_pad", lambda nn: nn.AvgPool2d(3, stride=2, padding=1), [(2, 2, 7, 8)], None),
    ("avgpool2d_pad_exclude", lambda nn: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
     [(2, 2, 7, 8)], None),
    ("avgpool2d_ceil", lambda nn: nn.AvgPool2d(3, 2, 1, ceil_mode=True), [(1, 2, 8, 8)], None),
    ("avgpool2d_divisor", lambda nn: nn.AvgPool2d(2, divisor_override=3), [(1, 2, 4, 4)],
     None),
    ("avgpool1d", lambda nn: nn.AvgPool1d(3, 2, 1), [(2, 3, 9)], None),
    ("adaptive_avgpool2d_1", lambda nn: nn.AdaptiveAvgPool2d(1), [(2, 3, 5, 7)], None),
    ("adaptive_avgpool2d_uneven", lambda nn: nn.AdaptiveAvgPool2d((3, 4)), [(2, 3, 7, 9)],
     None),
    ("adaptive_avgpool2d_none", lambda nn: nn.AdaptiveAvgPool2d((2, None)), [(1, 2, 5, 3)],
     None),
    ("adaptive_avgpool1d", lambda nn: nn.AdaptiveAvgPool1d(4), [(2, 3, 10)], None),
    ("layernorm", lambda nn: nn.LayerNorm(6), [(3, 4, 6)], None),
    ("layernorm_2d_shape", lambda nn: nn.LayerNorm((4, 6), eps=1e-3), [(3, 4, 6)], None),
    ("layernorm_no_affine", lambda nn: nn.LayerNorm(6, elementwise_affine=False), [(3, 6)],
     None),
    ("layernorm_no_bias", lambda nn: nn.LayerNorm(6, bias=False), [(3, 6)], None),
    ("groupnorm", lambda nn: nn.GroupNorm(2, 6), [(3, 6, 4, 4)], None),
    ("groupnorm_3d", lambda nn: nn.GroupNorm(3, 6, affine=False), [(3, 6, 5)], None),
    ("batchnorm1d_eval", lambda nn: nn.BatchNorm1d(4), [(5, 4)], None),
    ("batchnorm2d_eval", lambda nn: nn.BatchNorm2d(3), [(2, 3, 4, 4)], None),
    ("embedding", lambda nn: nn.Embedding(10, 4),
     [np.array([[1, 2, 4, 5], [4, 3, 2, 9]])], None),
    ("embedding_padding", lambda nn: nn.Embedding(10, 4, padding_idx=0),
     [np.array([[0, 2, 0, 5], [4, 3, 2, 0]])], None),
    ("relu", lambda nn: nn.ReLU(), [(3, 4)], None),
    ("leaky_relu", lambda nn: nn.LeakyReLU(0.2), [(3, 4)], None),
    ("gelu", lambda nn: nn.GELU(), [(3, 4)], None),
    ("gelu_tanh", lambda nn: nn.GELU(approximate="tanh"), [(3, 4)], None),
    ("silu", lambda nn: nn.SiLU(), [(3, 4)], None),
    ("sigmoid", lambda nn: nn.Sigmoid(), [(3, 4)], None),
    ("tanh", lambda nn: nn.Tanh(), [(3, 4)], None),
    ("softmax", lambda nn: nn.Softmax(dim=1), [(3, 4, 2)], None),
    ("softmax_implicit_dim", lambda nn: nn.Softmax(), [(3, 4)], None),
    ("log_softmax", lambda nn: nn.LogSoftmax(dim=-1), [(3, 4)], None),
    ("elu", lambda nn: nn.ELU(alpha=0.5), [(3, 4)], None),
    ("softplus", lambda nn: nn.Softplus(beta=2.0, threshold=3.0), [(3, 4)], None),
    ("relu6", lambda nn: nn.ReLU6(), [(3, 4)], None),
    ("hardswish", lambda nn: nn.Hardswish(), [(3, 4)], None),
    ("mish", lambda nn: nn.Mish(), [(3, 4)], None),
    ("glu", lambda nn: nn.GLU(), [(3, 4)], None),
    ("sequential", lambda nn: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)),
     [(5, 4)], None),
    ("digits_cnn", lambda nn: nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 10)), [(4, 1, 8, 8)], None),
]

FLOAT32 = {"linear", "conv2d_pad", "conv2d_stride", "conv_transpose2d_stride", "maxpool2d",
           "avgpool2d_pad", "layernorm", "groupnorm", "batchnorm2d_eval", "gelu",
           "digits_cnn", "embedding"}


@pytest.mark.parametrize("name,make,inputs,call", CASES, ids=[c[0] for c in CASES])
def test_layer_float64(name, make, inputs, call):
    check_layer(make, inputs, call=call)


@pytest.mark.parametrize("name,make,inputs,call", [c for c in CASES if c[0] in FLOAT32],
                         ids=[c[0] for c in CASES if c[0] in FLOAT32])
def test_layer_float32(name, make, inputs, call):
    check_layer(make, inputs, call=call, dtype=np.float32, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,make,inputs,call",
                         [c for c in CASES if c[0] in FLOAT32 | {"conv_transpose2d_groups_dil",
                                                                 "bilinear"}],
                         ids=[c[0] for c in CASES if c[0] in FLOAT32 | {
                             "conv_transpose2d_groups_dil", "bilinear"}])
def test_kiln_state_dict_loads_into_torch(name, make, inputs, call):
    """The reverse direction: kiln's own initialization, loaded into torch, same outputs."""
    kiln.manual_seed(1)
    k_layer = make(kiln.nn).double().eval()
    t_layer = make(torch.nn).double().eval()
    t_layer.load_state_dict(kiln_to_torch_state(k_layer))
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(-2, 2, x) if isinstance(x, tuple) else x for x in inputs]
    call = call or (lambda layer, *xs: layer(*xs))
    k_out = call(k_layer, *[kiln.tensor(a) for a in arrays])
    t_out = call(t_layer, *[torch.from_numpy(np.array(a)) for a in arrays])
    k_out = k_out[0] if isinstance(k_out, tuple) else k_out
    t_out = t_out[0] if isinstance(t_out, tuple) else t_out
    np.testing.assert_allclose(k_out.detach().numpy(), t_out.detach().numpy(), atol=1e-9,
                               rtol=1e-9)


def test_maxpool_gradient_goes_to_first_maximum_on_ties():
    # ReLU outputs are full of tied zeros: PyTorch routes the gradient to one of them
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = 1.0
    check_layer(lambda nn: nn.MaxPool2d(2), [x])


@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 4, 7, 6)])
def test_maxpool_on_channels_last_memory(shape):
    # a conv's output is channels-last in memory; max pooling stacks it channels-last: same
    # values and gradients (ties from ReLU zeros included) as PyTorch on the NCHW values
    n, c, h, w = shape
    nhwc = np.maximum(np.random.default_rng(0).uniform(-1, 1, (n, h, w, c)), 0.0)
    x = kiln.tensor(nhwc).permute(0, 3, 1, 2).detach().requires_grad_()
    xt = torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))).requires_grad_()
    weights = np.random.default_rng(1).uniform(-1, 1, (n, c, h // 2, w // 2))
    (kiln.nn.functional.max_pool2d(x, 2) * kiln.tensor(weights)).sum().backward()
    (torch.nn.functional.max_pool2d(xt, 2) * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_array_equal(kiln.nn.functional.max_pool2d(x, 2).detach().numpy(),
                                  torch.nn.functional.max_pool2d(xt, 2).detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), xt.grad.numpy())
    if h % 2 == 0 and w % 2 == 0:
        # the gradient comes back channels-last too, so the layers below never mix layouts
        (grad,) = kiln.autograd.grad(kiln.nn.functional.max_pool2d(x, 2).sum(), [x])
        assert grad.numpy().strides[1] == grad.numpy().itemsize


def test_conv_float32_mnist_size():
    check_layer(lambda nn: nn.Conv2d(1, 4, 5, stride=1), [(8, 1, 28, 28)], dtype=np.float32,
                atol=1e-5, rtol=1e-4)


def test_batchnorm_training_matches_and_running_stats():
    for make, shape in [(lambda nn: nn.BatchNorm2d(3, momentum=0.2), (4, 3, 5, 5)),
                        (lambda nn: nn.BatchNorm1d(4), (6, 4)),
                        (lambda nn: nn.BatchNorm1d(4), (6, 4, 3)),
                        (lambda nn: nn.BatchNorm1d(4, momentum=None), (6, 4))]:
        t_layer, k_layer = build_pair(make, train=True)
        rng = np.random.default_rng(0)
        for step in range(3):
            x = rng.normal(step, 1.0 + step, shape)
            t_out = t_layer(torch.from_numpy(x))
            k_out = k_layer(kiln.tensor(x))
            np.testing.assert_allclose(k_out.detach().numpy(), t_out.detach().numpy(),
                                       atol=1e-10)
        for key, t_value in t_layer.state_dict().items():
            np.testing.assert_allclose(k_layer.state_dict()[key].numpy(), t_value.numpy(),
                                       atol=1e-12, err_msg=key)
        assert k_layer.num_batches_tracked.dtype is kiln.int64
        t_layer.eval()
        k_layer.eval()
        x = rng.normal(0, 1, shape)
        np.testing.assert_allclose(k_layer(kiln.tensor(x)).detach().numpy(),
                                   t_layer(torch.from_numpy(x)).detach().numpy(), atol=1e-10)



def test_batchnorm_cumulative_average_compiles_whole_and_matches_torch():
    # momentum=None read num_batches_tracked into Python (1 / float(count)): a compiled forward
    # broke the graph and ran eagerly; now the count's weight is a tensor, replayed per call
    import warnings
    t_layer, k_layer = build_pair(lambda nn: nn.BatchNorm1d(4, momentum=None), train=True)
    compiled = kiln.compile(k_layer)
    rng = np.random.default_rng(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(6):
            train = step % 3 != 2
            t_layer.train(train)
            k_layer.train(train)
            x = rng.normal(step, 1.0 + step, (6, 4))
            np.testing.assert_allclose(compiled(kiln.tensor(x)).detach().numpy(),
                                       t_layer(torch.from_numpy(x)).detach().numpy(),
                                       rtol=1e-9, atol=1e-10)
    for key, t_value in t_layer.state_dict().items():
        np.testing.assert_allclose(k_layer.state_dict()[key].numpy(), t_value.numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=key)
    assert int(k_layer.num_batches_tracked) == 4
    assert sum(e.calls for e in compiled.entries.values()) >= 3     # replayed, not eager


def test_batchnorm_training_gradients():
    check_layer(lambda nn: nn.BatchNorm2d(3), [(4, 3, 3, 3)], train=True)
    check_layer(lambda nn: nn.BatchNorm1d(3, affine=False), [(5, 3)], train=True)
    check_layer(lambda nn: nn.BatchNorm1d(3, track_running_stats=False), [(5, 3)], train=True)


def test_batchnorm_no_running_stats_in_eval_uses_batch_stats():
    check_layer(lambda nn: nn.BatchNorm1d(3, track_running_stats=False), [(5, 3)], train=False)


def test_batchnorm_rejects_single_value_per_channel():
    layer = kiln.nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(kiln.randn(1, 3))
    with pytest.raises(ValueError, match="expected 4D input"):
        kiln.nn.BatchNorm2d(3)(kiln.randn(2, 3))


@pytest.mark.parametrize("shape", [(6, 16, 4, 4), (5, 3, 2, 3)])
def test_batchnorm_training_on_channels_last_memory(shape):
    # a conv's output is channels-last in memory: batch norm's primitives read it as a
    # (rows, C) matrix; values, gradients (input, weight, bias) and running stats as PyTorch's
    n, c, h, w = shape
    rng = np.random.default_rng(0)
    nhwc = rng.normal(0.5, 2.0, (n, h, w, c))
    grad = rng.normal(size=(n, c, h, w))
    t_layer, k_layer = build_pair(lambda nn: nn.BatchNorm2d(c), train=True)
    x = kiln.tensor(nhwc).permute(0, 3, 1, 2).detach().requires_grad_()
    xt = torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))).requires_grad_()
    k_out, t_out = k_layer(x), t_layer(xt)
    np.testing.assert_allclose(k_out.detach().numpy(), t_out.detach().numpy(), atol=1e-12)
    k_out.backward(kiln.tensor(grad))
    t_out.backward(torch.from_numpy(grad))
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), atol=1e-12)
    for (name, kp), tp in zip(k_layer.named_parameters(), t_layer.parameters()):
        np.testing.assert_allclose(kp.grad.numpy(), tp.grad.numpy(), atol=1e-11, err_msg=name)
    for key, t_value in t_layer.state_dict().items():
        np.testing.assert_allclose(k_layer.state_dict()[key].numpy(), t_value.numpy(),
                                   atol=1e-12, err_msg=key)


def test_batchnorm_training_double_backward():
    # the gradient of batch norm's gradient (a gradient penalty), as PyTorch computes it
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))
    grads = []
    for lib in (kiln, torch):
        t = lib.tensor(x, requires_grad=True)
        layer = lib.nn.BatchNorm2d(3).double() if lib is torch else lib.nn.BatchNorm2d(
            3, dtype=kiln.float64)
        out = (layer(t) * lib.tensor(w)).sum()
        (g,) = lib.autograd.grad(out, [t], create_graph=True)
        (g * g).sum().backward()
        grads.append((t.grad.detach().numpy(), layer.weight.grad.detach().numpy()))
    np.testing.assert_allclose(grads[0][0], grads[1][0], atol=1e-10)
    np.testing.assert_allclose(grads[0][1], grads[1][1], atol=1e-10)


@pytest.mark.parametrize("kwargs", [{}, {"affine": True}, {"affine": True, "bias": False},
                                    {"track_running_stats": True}], ids=str)
def test_instance_norm_takes_bias_and_prints_as_torch(kwargs) -> None:
    # module reprs printed by the tutorials: torch 2.13's InstanceNorm2d shows bias=...; and
    # InstanceNorm2d(3, affine=True, bias=False) keeps a weight without a bias
    k, t = kiln.nn.InstanceNorm2d(3, **kwargs), torch.nn.InstanceNorm2d(3, **kwargs)
    assert repr(k) == repr(t)
    assert list(k.state_dict()) == list(t.state_dict())
    if kwargs.get("affine"):
        with torch.no_grad():
            t.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        k.weight.data = kiln.tensor([0.5, 2.0, -1.0])
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(k(kiln.tensor(x)).detach().numpy(),
                               t(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
