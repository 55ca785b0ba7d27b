"""`torch.__future__`: the switches for how `Module.to()` / `.double()` / `._apply()` give a
module its converted parameters.

kiln's default already keeps each Parameter object and gives it the converted values (what
PyTorch's swap path does), so `set_swap_module_params_on_conversion` is stored and read back;
`set_overwrite_module_params_on_conversion(True)` makes the conversion build new Parameter
objects instead, as in PyTorch.
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
    """Whether converting a module swaps the converted values into the existing Parameter
    objects (kiln's behaviour either way: its conversion keeps the objects)."""
    global _swap_module_params_on_conversion
    _swap_module_params_on_conversion = bool(value)


def get_swap_module_params_on_conversion() -> bool:
    return _swap_module_params_on_conversion
