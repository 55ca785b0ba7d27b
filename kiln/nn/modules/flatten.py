"""`torch.nn.modules.flatten` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.linear import Flatten, Unflatten  # noqa: F401
