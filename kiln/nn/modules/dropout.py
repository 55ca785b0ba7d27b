"""`torch.nn.modules.dropout` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.dropout import (  # noqa: F401
    _DropoutNd, Dropout, Dropout1d, Dropout2d, Dropout3d, AlphaDropout, FeatureAlphaDropout)
