"""The char-RNN name generation tutorial (a Linear-built RNN over cat((category, input,
hidden)), in-place unsqueeze_ of LongTensor targets, losses summed over letters from
torch.Tensor([0]), manual SGD through p.data.add_(p.grad.data, alpha=-lr), topk sampling):
without dropout kiln's losses and sampled names equal torch's; with the tutorial's dropout,
kiln's final loss is within torch's seed spread."""

from tests.scripts.harness import check_same_losses, check_within_spread


def test_char_rnn_generation_same_losses_and_names_as_torch():
    t, k = check_same_losses("char_rnn_generation", rtol=1e-5, compiled=False)
    assert k["names"] == t["names"]


def test_char_rnn_generation_with_dropout_within_torch_spread():
    check_within_spread("char_rnn_generation", dropout=0.1, iterations=60, compiled=False)
