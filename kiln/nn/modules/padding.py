"""`torch.nn.modules.padding` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.padding import (  # noqa: F401
    CircularPad1d, CircularPad2d, CircularPad3d, _ConstantPadNd, ConstantPad1d, ConstantPad2d,
    ConstantPad3d, ReflectionPad1d, ReflectionPad2d, ReflectionPad3d, ReplicationPad1d,
    ReplicationPad2d, ReplicationPad3d, ZeroPad1d, ZeroPad2d, ZeroPad3d)
