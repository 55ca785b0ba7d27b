"""pytorch/examples word_language_model (RNNModel): tied embedding, BPTT with repackaged hidden
state, clip_grad_norm_, SGD through p.data; LSTM and GRU."""

import pytest

from tests.scripts.harness import check_same_losses, check_within_spread


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_word_lm_same_losses_as_torch_without_dropout(rnn_type):
    t, k = check_same_losses("word_lm_lstm", dropout=0.0, rnn_type=rnn_type,
                             compiled=rnn_type == "LSTM")
    assert abs(k["val_loss"] / t["val_loss"] - 1) < 1e-5


def test_word_lm_with_dropout_within_torch_spread():
    check_within_spread("word_lm_lstm", key="val_loss", compiled=False)
