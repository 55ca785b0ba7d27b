"""`torch.nn.modules.adaptive` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.adaptive import _ASMoutput, AdaptiveLogSoftmaxWithLoss  # noqa: F401
