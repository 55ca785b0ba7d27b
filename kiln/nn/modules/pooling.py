"""`torch.nn.modules.pooling` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.pooling import (  # noqa: F401
    _MaxPoolNd, MaxPool1d, MaxPool2d, MaxPool3d, _MaxUnpoolNd, MaxUnpool1d, MaxUnpool2d,
    MaxUnpool3d, AvgPool1d, AvgPool2d, AvgPool3d, FractionalMaxPool2d, FractionalMaxPool3d,
    _LPPoolNd, LPPool1d, LPPool2d, LPPool3d, AdaptiveMaxPool1d, AdaptiveMaxPool2d,
    AdaptiveMaxPool3d, AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d)
