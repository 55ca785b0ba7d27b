"""`torch.nn.modules.normalization` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.instancenorm import LocalResponseNorm, CrossMapLRN2d  # noqa: F401
from kiln.nn.normalization import LayerNorm, GroupNorm, RMSNorm  # noqa: F401
