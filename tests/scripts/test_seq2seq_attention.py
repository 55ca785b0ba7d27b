"""The "NLP From Scratch" translation tutorial's pattern: batch_first GRU encoder, Bahdanau
attention decoder with teacher forcing, log_softmax + NLLLoss, two Adam optimizers, a
RandomSampler DataLoader and greedy topk decoding under no_grad."""

import numpy as np

from tests.scripts.harness import check_same_losses, check_within_spread, no_compile_fallback


def test_seq2seq_attention_same_losses_words_and_attention_as_torch():
    # dropout off and one batch per epoch, so both runs see the same data and no noise
    with no_compile_fallback():
        t, k = check_same_losses("seq2seq_attention", dropout=0.0, n_epochs=15, rtol=1e-5,
                                 atol=1e-6)
    assert k["words"] == t["words"]
    np.testing.assert_allclose(k["attentions"], t["attentions"], rtol=1e-4, atol=1e-6)


def test_seq2seq_attention_with_dropout_and_shuffled_batches_within_torch_spread():
    check_within_spread("seq2seq_attention", batch_size=8, n_epochs=6, compiled=False)

