"""`torch.nn.modules.container` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.containers import (  # noqa: F401
    Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict)
from kiln.nn.module import _addindent  # noqa: F401
