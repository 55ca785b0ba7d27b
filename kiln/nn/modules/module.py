"""`torch.nn.modules.module` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.module import _IncompatibleKeys, _addindent, Module  # noqa: F401
