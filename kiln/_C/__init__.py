"""`torch._C`'s names that user code reaches for: the `__torch_function__` switches.

PyTorch's `_C` is its C++ extension; kiln has none. Subclass authors write
`__torch_function__ = torch._C._disabled_torch_function_impl` and
`with torch._C.DisableTorchFunctionSubclass():`, and these are those names
(`_disabled_torch_dispatch_impl` too: such a subclass takes no part in dispatch).
"""

from kiln.tracer.dispatch_mode import (  # noqa: F401
    disabled_torch_dispatch_impl as _disabled_torch_dispatch_impl)
from kiln.tracer.tensor import STATE as _STATE
from kiln.tracer.torch_function import (  # noqa: F401
    DisableTorchFunction, DisableTorchFunctionSubclass,
    disabled_torch_function_impl as _disabled_torch_function_impl)


def _is_torch_function_enabled() -> bool:
    return not _STATE.tf_off and not _STATE.tf_subclass_off


def _is_torch_function_mode_enabled() -> bool:
    return bool(_STATE.tf_modes) and not _STATE.tf_off


def _len_torch_function_stack() -> int:
    return len(_STATE.tf_modes)


def _get_function_stack_at(i: int):
    return _STATE.tf_modes[i]


from kiln._C import _profiler  # noqa: E402,F401  (torch._C._profiler._ExperimentalConfig)
