"""NLP From Scratch, classifying names: one-hot letters by index assignment, nn.RNN, the last
hidden state to LogSoftmax, a summed mini-batch NLLLoss, clip_grad_norm_(model.parameters())
and SGD; same losses as torch from torch's weights."""

from tests.scripts.harness import check_same_losses


def test_char_rnn_classification_same_losses_as_torch():
    # per-name Python loops inside each batch: nothing worth compiling
    check_same_losses("char_rnn_classification", compiled=False)
