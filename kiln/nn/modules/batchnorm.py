"""`torch.nn.modules.batchnorm` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.lazy import LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d  # noqa: F401
from kiln.nn.normalization import _BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d  # noqa: F401
from kiln.nn.sync_batchnorm import SyncBatchNorm  # noqa: F401,E402
