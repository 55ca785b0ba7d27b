"""`torch.nn.modules.lazy` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.lazy import LazyModuleMixin  # noqa: F401
