"""`torch.nn.modules.fold` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.fold import Fold, Unfold  # noqa: F401
