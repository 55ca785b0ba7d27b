"""`torch.nn.modules.upsampling` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.upsampling import Upsample, UpsamplingNearest2d, UpsamplingBilinear2d  # noqa: F401
