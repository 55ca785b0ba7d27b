"""nn.Transformer, TransformerDecoderLayer and TransformerDecoder against torch: values and
gradients with torch's weights, masks, batch_first, norm_first, and the causal mask helper."""

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import check_layer

S, T, B, D = 5, 4, 3, 8


def _causal(n):
    return np.triu(np.ones((n, n), dtype=bool), 1)


DECODERS = {
    "layer": (lambda nn: nn.TransformerDecoderLayer(D, 2, 16, dropout=0.0),
              [(T, B, D), (S, B, D)], None),
    "layer-norm-first-gelu": (lambda nn: nn.TransformerDecoderLayer(
        D, 2, 16, dropout=0.0, norm_first=True, activation="gelu", batch_first=True),
        [(B, T, D), (B, S, D)], None),
    "layer-masks": (lambda nn: nn.TransformerDecoderLayer(D, 2, 16, dropout=0.0),
                    [(T, B, D), (S, B, D), _causal(T)],
                    lambda m, tgt, mem, mask: m(tgt, mem, tgt_mask=mask)),
    "stack": (lambda nn: nn.TransformerDecoder(nn.TransformerDecoderLayer(D, 2, 16, 0.0), 2,
                                               nn.LayerNorm(D)),
              [(T, B, D), (S, B, D), _causal(T)],
              lambda m, tgt, mem, mask: m(tgt, mem, tgt_mask=mask)),
    "transformer": (lambda nn: nn.Transformer(D, 2, 2, 2, 16, dropout=0.0),
                    [(S, B, D), (T, B, D), _causal(T)],
                    lambda m, src, tgt, mask: m(src, tgt, tgt_mask=mask)),
    "transformer-batch-first": (lambda nn: nn.Transformer(D, 2, 1, 1, 16, dropout=0.0,
                                                          batch_first=True),
                                [(B, S, D), (B, T, D)], None),
}


@pytest.mark.parametrize("name", DECODERS)
def test_matches_torch(name):
    make, inputs, call = DECODERS[name]
    check_layer(make, inputs, call=call, train=True)


def test_padding_masks_match_torch():
    padding = np.zeros((B, S), dtype=bool)
    padding[0, -2:] = True
    check_layer(lambda nn: nn.Transformer(D, 2, 1, 1, 16, dropout=0.0),
                [(S, B, D), (T, B, D), padding],
                call=lambda m, src, tgt, pad: m(src, tgt, src_key_padding_mask=pad,
                                                memory_key_padding_mask=pad))


def test_square_subsequent_mask_and_init():
    k = kiln.nn.Transformer.generate_square_subsequent_mask(4).numpy()
    t = torch.nn.Transformer.generate_square_subsequent_mask(4).numpy()
    np.testing.assert_array_equal(k, t)
    model = kiln.nn.Transformer(16, 2, 1, 1, 32)
    # Xavier-uniform bound for the (3*16, 16) in-projection
    bound = np.sqrt(6 / (16 + 48))
    w = model.encoder.layers[0].self_attn.in_proj_weight.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    with pytest.raises(RuntimeError, match="batch number"):
        model(kiln.zeros(5, 2, 16), kiln.zeros(4, 3, 16))
