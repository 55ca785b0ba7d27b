"""`torch.__future__`: the switches for how `Module.to()` / `.double()` / `._apply()` give a
module its converted parameters.

kiln's default keeps each Parameter object and sets its `.data` to the converted values;
`set_swap_module_params_on_conversion(True)` swaps the converted Parameter into the old object
instead (`kiln.utils.swap_tensors`: a tensor subclass's attributes are converted too) and makes
`load_state_dict` go through `Tensor.module_load`; `set_overwrite_module_params_on_conversion(True)`
makes the conversion build new Parameter objects, as in PyTorch.
"""

from __future__ import annotations

_overwrite_module_params_on_conversion = False
_swap_module_params_on_conversion = False


def set_overwrite_module_params_on_conversion(value: bool) -> None:
    """Whether converting a module assigns new Parameter objects (old references keep the old
    values) instead of updating the existing ones."""
    global _overwrite_module_params_on_conversion
    _overwrite_module_params_on_conversion = bool(value)


def get_overwrite_module_params_on_conversion() -> bool:
    return _overwrite_module_params_on_conversion


def set_swap_module_params_on_conversion(value: bool) -> None:
    """Whether converting a module swaps the converted Parameter into the existing object
    (and load_state_dict swaps in `Tensor.module_load`'s result) rather than setting `.data`."""
    global _swap_module_params_on_conversion
    _swap_module_params_on_conversion = bool(value)


def get_swap_module_params_on_conversion() -> bool:
    return _swap_module_params_on_conversion
