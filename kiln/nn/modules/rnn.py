"""`torch.nn.modules.rnn` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.rnn import (  # noqa: F401
    RNNBase, RNN, LSTM, GRU, RNNCellBase, RNNCell, LSTMCell, GRUCell)
