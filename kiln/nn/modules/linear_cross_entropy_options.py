"""`torch.nn.modules.linear_cross_entropy_options` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.linear_cross_entropy import LinearCrossEntropyOptions  # noqa: F401
