"""`torch.nn.modules.channelshuffle` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.pixelshuffle import ChannelShuffle  # noqa: F401
