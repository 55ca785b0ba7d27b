"""AdaptiveLogSoftmaxWithLoss, LinearCrossEntropyLoss, fractional max pooling, DataParallel and
factory_kwargs against torch (values and gradients, torch's weights and random samples)."""

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import check_layer
from tests.parity import check_op


def test_adaptive_log_softmax_matches_torch():
    target = np.array([0, 2, 3, 5, 9, 7, 1, 4])
    t_layer, k_layer = check_layer(
        lambda nn: nn.AdaptiveLogSoftmaxWithLoss(8, 10, [3, 6], div_value=2.0, head_bias=True),
        [(8, 8), target])
    x = np.random.default_rng(3).normal(size=(5, 8))
    np.testing.assert_allclose(k_layer.log_prob(kiln.tensor(x)).detach().numpy(),
                               t_layer.log_prob(torch.tensor(x)).detach().numpy(), rtol=1e-9)
    assert k_layer.predict(kiln.tensor(x)).tolist() == t_layer.predict(torch.tensor(x)).tolist()
    with pytest.raises(ValueError, match="cutoffs"):
        kiln.nn.AdaptiveLogSoftmaxWithLoss(8, 10, [6, 3])


@pytest.mark.parametrize("kwargs", [dict(), dict(bias=True, reduction="sum"),
                                    dict(out_features=(2,), label_smoothing=0.1)])
def test_linear_cross_entropy_loss_matches_torch(kwargs):
    target = np.random.default_rng(0).integers(0, 5, (6, 2) if "out_features" in kwargs
                                               else (6,))
    check_layer(lambda nn: nn.LinearCrossEntropyLoss(4, 5, **kwargs), [(6, 4), target])


def test_linear_cross_entropy_functional_matches_torch():
    target = np.random.default_rng(1).integers(0, 5, (6,))
    check_op(lambda lib, x, w, b: lib.nn.functional.linear_cross_entropy(
        x, w, lib.tensor(target), linear_bias=b, ignore_index=2), [(6, 4), (5, 4), (5,)],
        dtype=np.float64)


@pytest.mark.parametrize("dims,shape,kernel,size,ratio", [
    (2, (2, 3, 9, 11), (2, 3), (4, 5), None),
    (2, (3, 9, 11), 3, None, 0.6),
    (3, (1, 2, 7, 6, 8), 2, (3, 4, 5), None),
])
def test_fractional_max_pool_matches_torch_with_the_same_samples(dims, shape, kernel, size,
                                                                 ratio):
    batch = shape[0] if len(shape) == dims + 2 else 1
    planes = shape[-dims - 1]
    samples = np.random.default_rng(0).random((batch, planes, dims))
    cls = f"FractionalMaxPool{dims}d"
    check_layer(lambda nn: getattr(nn, cls)(kernel, size, ratio, return_indices=True,
                                            _random_samples=(torch if nn is torch.nn else kiln)
                                            .tensor(samples)), [shape])


def test_fractional_max_pool_draws_its_own_samples():
    kiln.manual_seed(0)
    out = kiln.nn.FractionalMaxPool2d(2, output_ratio=0.5)(kiln.randn(2, 3, 8, 8))
    assert tuple(out.shape) == (2, 3, 4, 4)


def test_data_parallel_and_factory_kwargs():
    inner = kiln.nn.Linear(3, 2)
    wrapped = kiln.nn.DataParallel(inner)
    x = kiln.randn(4, 3)
    np.testing.assert_array_equal(wrapped(x).detach().numpy(), inner(x).detach().numpy())
    assert list(wrapped.state_dict()) == list(torch.nn.DataParallel(
        torch.nn.Linear(3, 2)).state_dict())
    for kwargs in [None, {"dtype": 1}, {"device": "cpu", "factory_kwargs": {"dtype": 2}}]:
        assert kiln.nn.factory_kwargs(kwargs) == torch.nn.factory_kwargs(kwargs)
    with pytest.raises(TypeError, match="unexpected"):
        kiln.nn.factory_kwargs({"bogus": 1})
