"""Building a module without running its initialization, and the memory-format converters
(kiln chooses its own layouts, so these return the module unchanged)."""

from __future__ import annotations

import kiln
from kiln.nn.module import Module

__all__ = ["skip_init", "convert_conv2d_weight_memory_format",
           "convert_conv3d_weight_memory_format"]


def skip_init(module_cls, *args, **kwargs) -> Module:
    """The module with its parameters left uninitialized (here: zeros, never random draws)."""
    if not issubclass(module_cls, Module):
        raise RuntimeError(f"Expected a Module; got {module_cls}")
    if "device" not in module_cls.__init__.__code__.co_varnames:
        raise RuntimeError("Module must support a 'device' arg to skip initialization")
    state = kiln.get_rng_state()
    module = module_cls(*args, **kwargs)
    # PyTorch builds on the meta device and allocates empty storage; kiln builds normally and
    # puts the random stream back, so skipping init leaves later draws unchanged
    kiln.set_rng_state(state)
    return module


def convert_conv2d_weight_memory_format(module: Module, memory_format) -> Module:
    return module


def convert_conv3d_weight_memory_format(module: Module, memory_format) -> Module:
    return module
