"""`kiln.export.unflatten`: an exported program as a module again, its weights back in a
submodule tree named as the original's state dict (`lin.weight` is `.lin.weight`).

torch's unflatten rebuilds each submodule's own forward; kiln's programs keep no submodule
boundaries, so the rebuilt module's `forward` runs the whole program, reading the module's
current parameters and buffers (load_state_dict or in-place edits take effect). kiln.nn is
imported on the first call: kiln.export loads before kiln.nn does."""

from __future__ import annotations

from dataclasses import replace
from functools import cache


@cache
def _module_class():
    from kiln.nn import Module, Parameter

    class UnflattenedModule(Module):
        """What `unflatten` returns; `forward` takes the exported program's arguments."""

        def __init__(self, program) -> None:
            super().__init__()
            self._program = program
            for name in program.parameter_names:
                *path, leaf = name.split(".")
                owner = self
                for part in path:
                    if part not in owner._modules:
                        owner.add_module(part, Module())
                    owner = owner._modules[part]
                tensor = program.state_dict[name].clone()
                kind = program.state_kinds.get(name, "constant")
                if kind == "parameter":
                    owner.register_parameter(leaf, Parameter(tensor))
                else:
                    owner.register_buffer(leaf, tensor, persistent=kind == "buffer")

        def forward(self, *args, **kwargs):
            state = dict(self.named_parameters())
            state.update(self.named_buffers())
            return replace(self._program, state_dict=state)(*args, **kwargs)
    return UnflattenedModule


def unflatten(module, flat_args_adapter=None):
    """torch.export.unflatten: the ExportedProgram `module` as a kiln.nn.Module with its
    original submodule tree of parameters and buffers (see the module docstring)."""
    if flat_args_adapter is not None:
        raise NotImplementedError("kiln.export.unflatten: flat_args_adapter is not supported "
                                  "(kiln's programs keep the original call signature)")
    return _module_class()(module)
