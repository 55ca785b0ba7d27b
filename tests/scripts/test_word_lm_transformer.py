"""pytorch/examples word_language_model (TransformerModel, a subclass of nn.Transformer that
replaces its decoder): positional-encoding buffer, log(tril) causal mask, SGD through p.data.
nn.Transformer's own layers keep dropout 0.1, so torch and kiln draw different masks: kiln's
final loss must be within torch's seed spread."""

from tests.scripts.harness import check_within_spread


def test_word_lm_transformer_trains_like_torch():
    check_within_spread("word_lm_transformer")
