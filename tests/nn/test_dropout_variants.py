"""Which entries share a dropout draw, for every dropout flavour and input rank, as in PyTorch
2.13 (a 2-D input to Dropout2d drops single elements; 3-D is read as (N, C, L)); the alpha
dropouts keep SELU activations' mean and variance."""

import warnings

import numpy as np
import pytest
import torch

import kiln


def _mask_groups(y: np.ndarray, group_ndim: int) -> np.ndarray:
    """Per draw group (the first `group_ndim` dims), whether all entries were zeroed together."""
    flat = y.reshape(*y.shape[:group_ndim], -1)
    zero = flat == 0
    assert np.all(zero.all(-1) | (~zero).all(-1)), "a draw group is partly dropped"
    return zero[..., 0]


# (layer, input shape, number of leading dims that get their own draw) — from torch's rules
CASES = [
    ("Dropout2d", (40, 50), 2),          # element-wise (PyTorch: feature dropout over (N, C))
    ("Dropout2d", (10, 20, 6), 2),       # (N, C, L)
    ("Dropout2d", (10, 20, 3, 3), 2),
    ("Dropout1d", (200, 6), 1),           # unbatched (C, L)
    ("Dropout1d", (10, 20, 6), 2),
    ("Dropout3d", (200, 2, 2, 2), 1),     # unbatched (C, D, H, W)
    ("Dropout3d", (10, 20, 2, 2, 2), 2),
    ("FeatureAlphaDropout", (10, 20, 3, 3), 2),
]


@pytest.mark.parametrize("name,shape,groups", CASES)
def test_draw_groups_match_torch(name, shape, groups):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_out = getattr(torch.nn, name)(0.5)(torch.ones(shape)).numpy()
        k_layer = getattr(kiln.nn, name)(0.5)
        k_out = k_layer(kiln.ones(*shape)).numpy()
    if name == "FeatureAlphaDropout":     # dropped entries take a constant, not zero
        t_out, k_out = t_out - t_out.min(), k_out - k_out.min()
    t_dropped = _mask_groups(t_out, groups)
    k_dropped = _mask_groups(k_out, groups)
    assert 0.25 < k_dropped.mean() < 0.75 and 0.25 < t_dropped.mean() < 0.75
    kept = k_out[k_out != 0]
    expected_kept = t_out[t_out != 0]
    np.testing.assert_allclose(np.unique(kept), np.unique(expected_kept), rtol=1e-6)
    k_layer.eval()
    x = kiln.ones(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert k_layer(x) is x


def test_dropout2d_warns_like_torch_on_2d_and_3d_inputs():
    for shape in [(4, 5), (2, 4, 5)]:
        with pytest.warns(UserWarning, match="dropout2d"):
            kiln.nn.functional.dropout2d(kiln.ones(*shape), 0.5)


@pytest.mark.parametrize("name", ["AlphaDropout", "FeatureAlphaDropout"])
def test_alpha_dropout_keeps_selu_statistics(name):
    kiln.manual_seed(0)
    x = kiln.nn.functional.selu(kiln.randn(400, 300, 2))
    y = getattr(kiln.nn, name)(0.2)(x).numpy()
    assert abs(y.mean() - x.numpy().mean()) < 0.02
    assert abs(y.std() - x.numpy().std()) < 0.02
    # the values a dropped entry takes: PyTorch's affine map of SELU's saturation value
    alpha = 1.7580993408473766
    a = 1 / np.sqrt((alpha ** 2 * 0.2 + 1) * 0.8)
    assert np.isclose(y, -alpha * a + alpha * a * 0.2, atol=1e-6).mean() == \
        pytest.approx(0.2, abs=0.03)


def test_alpha_dropout_value_map_matches_torch_on_a_shared_mask():
    # with p -> keep mask fixed by hand, both libraries' formulas give the same values
    x = np.random.default_rng(0).normal(size=(6, 7))
    t = torch.nn.functional.alpha_dropout(torch.tensor(x), 0.0, True).numpy()
    k = kiln.nn.functional.alpha_dropout(kiln.tensor(x), 0.0, True).numpy()
    np.testing.assert_allclose(k, t)
    assert not np.any(kiln.nn.functional.alpha_dropout(kiln.tensor(x), 1.0, True).numpy())
