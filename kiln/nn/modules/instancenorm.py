"""`torch.nn.modules.instancenorm` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.instancenorm import (  # noqa: F401
    _InstanceNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d)
from kiln.nn.lazy import LazyInstanceNorm1d, LazyInstanceNorm2d, LazyInstanceNorm3d  # noqa: F401
