"""`torch.nn.modules.activation` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.activation import (  # noqa: F401
    Threshold, ReLU, RReLU, Hardtanh, ReLU6, Sigmoid, Hardsigmoid, Tanh, SiLU, Mish, Hardswish,
    ELU, CELU, SELU, GLU, GELU, Hardshrink, LeakyReLU, LogSigmoid, Softplus, Softshrink, PReLU,
    Softsign, Tanhshrink, Softmin, Softmax, Softmax2d, LogSoftmax)
from kiln.nn.transformer import MultiheadAttention  # noqa: F401
