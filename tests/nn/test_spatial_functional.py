"""The spatial functions and layers of `functional_spatial` against torch: values and gradients."""

import numpy as np
import pytest

from tests.nn.layer_parity import check_layer

LAYERS = [
    (lambda nn: nn.PixelShuffle(2), [(2, 8, 3, 5)]),
    (lambda nn: nn.PixelShuffle(3), [(9, 2, 2)]),
    (lambda nn: nn.PixelUnshuffle(2), [(2, 3, 4, 6)]),
    (lambda nn: nn.ChannelShuffle(3), [(2, 6, 2, 2)]),
]


@pytest.mark.parametrize("make,inputs", LAYERS, ids=range(len(LAYERS)))
def test_layer_matches_torch(make, inputs):
    check_layer(make, inputs)
