"""The chatbot tutorial's seq2seq pattern: packed bidirectional GRU encoder, Luong attention
decoder, masked NLL from gather/masked_select, teacher forcing, greedy search."""

import numpy as np
import pytest

from tests.scripts.harness import check_same_losses, check_within_spread


@pytest.mark.parametrize("attn_model", ["dot", "general", "concat"])
def test_chatbot_same_losses_and_replies_as_torch_without_dropout(attn_model):
    t, k = check_same_losses("chatbot", attn_model=attn_model, dropout=0.0, rtol=1e-4,
                             atol=1e-5, compiled=False)
    assert k["tokens"] == t["tokens"]
    np.testing.assert_allclose(k["scores"], t["scores"], rtol=1e-4)


def test_chatbot_with_dropout_within_torch_spread():
    check_within_spread("chatbot", compiled=False)
