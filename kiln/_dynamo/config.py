"""`torch._dynamo.config` for kiln: the settings training scripts write.

`recompile_limit` (alias `cache_size_limit`) is kiln.compile's: how many traced entries one
compiled function keeps before it runs eagerly (kiln.compiler.function.RECOMPILE_LIMIT, 8 as
PyTorch's).
The rest are accepted with PyTorch's defaults and change nothing in kiln, which traces by
running the function: `suppress_errors` (kiln always falls back to eager with a warning where a
compile fails), `capture_scalar_outputs`, dynamic-shape and module-guard switches, `verbose`,
`compiled_autograd` (a backward inside a compiled function is traced into its program already;
an eager one is compiled inside `kiln._dynamo.compiled_autograd.enable()`).
A name PyTorch does not have is refused, as PyTorch refuses it.
"""

from __future__ import annotations

import sys
import types

_LIMIT_NAMES = ("recompile_limit", "cache_size_limit")

_ACCEPTED = {
    "accumulated_recompile_limit": 256, "accumulated_cache_size_limit": 256,
    "suppress_errors": False, "verbose": False, "capture_scalar_outputs": False,
    "capture_dynamic_output_shape_ops": False, "automatic_dynamic_shapes": True,
    "assume_static_by_default": True, "optimize_ddp": True, "inline_inbuilt_nn_modules": True,
    "guard_nn_modules": True, "force_parameter_static_shapes": True, "specialize_int": False,
    "dynamic_shapes": True, "error_on_recompile": False, "replay_record_enabled": False,
    "allow_unspec_int_on_nn_module": False, "raise_on_ctx_manager_usage": True,
    "compiled_autograd": False,
}


class _Config(types.ModuleType):
    def __getattr__(self, name: str):
        if name in _LIMIT_NAMES:
            from kiln.compiler import function
            return function.RECOMPILE_LIMIT
        if name in _ACCEPTED:
            return _ACCEPTED[name]
        raise AttributeError(f"kiln._dynamo.config.{name} does not exist")

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("__"):
            return super().__setattr__(name, value)
        if name in _LIMIT_NAMES:
            from kiln.compiler import function
            function.RECOMPILE_LIMIT = int(value)
        elif name in _ACCEPTED:
            _ACCEPTED[name] = value
        else:
            raise AttributeError(f"kiln._dynamo.config.{name} does not exist")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_ACCEPTED) | set(_LIMIT_NAMES))


sys.modules[__name__].__class__ = _Config
