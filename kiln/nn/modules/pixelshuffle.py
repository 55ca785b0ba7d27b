"""`torch.nn.modules.pixelshuffle` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.pixelshuffle import PixelShuffle, PixelUnshuffle  # noqa: F401
