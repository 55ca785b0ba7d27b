"""`torch.nn.modules.conv` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.conv import (  # noqa: F401
    _ConvNd, Conv1d, Conv2d, _ConvTransposeNd, ConvTranspose1d, ConvTranspose2d)
from kiln.nn.conv3d import Conv3d, ConvTranspose3d  # noqa: F401
from kiln.nn.lazy import (  # noqa: F401
    LazyConv1d, LazyConv2d, LazyConv3d, LazyConvTranspose1d, LazyConvTranspose2d,
    LazyConvTranspose3d)
