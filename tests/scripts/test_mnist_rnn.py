"""pytorch/examples mnist_rnn: LSTM over rows, BatchNorm1d, Dropout2d on a 2-D input (which
PyTorch drops element-wise: the case that cost accuracy before), Adadelta + StepLR."""

import warnings

from tests.scripts.harness import check_within_spread


def test_mnist_rnn_trains_like_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # both libraries warn about 2-D Dropout2d
        check_within_spread("mnist_rnn", key="test_loss")
