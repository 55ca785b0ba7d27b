"""Translation tutorial with nn.Transformer: embeddings, positional encoding, causal and padding
masks, pad_sequence collation, CrossEntropyLoss(ignore_index); same losses from torch's
weights (dropout off, so both runs are deterministic)."""

from tests.scripts.harness import check_same_losses


def test_transformer_seq2seq_same_losses_as_torch():
    check_same_losses("transformer_seq2seq", rtol=1e-4, atol=1e-6)
