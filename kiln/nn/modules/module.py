"""`torch.nn.modules.module` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.module import _IncompatibleKeys, _addindent, Module  # noqa: F401
from kiln.nn.module import (  # noqa: F401
    register_module_backward_hook, register_module_forward_hook,
    register_module_forward_pre_hook, register_module_full_backward_hook,
    register_module_full_backward_pre_hook)
