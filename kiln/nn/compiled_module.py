"""`OptimizedModule`: what `kiln.compile(module)` returns, shaped as `torch.compile`'s result.

PyTorch wraps a compiled module in a Module whose only child is the original, `_orig_mod`. So
the wrapper's parameters, buffers and `state_dict()` keys carry the `_orig_mod.` prefix, and a
checkpoint saved from a compiled model has them (nanoGPT strips the prefix when it resumes).
kiln's wrapper is the same Module, so checkpoints and parameter names agree with PyTorch's both
ways. A call runs the compiled program (`kiln.compiler.CompiledFunction` of the original
module); any other attribute is the original module's, then the compiled function's
(`entries`, `backend`, ...).
"""

from __future__ import annotations

import copy

from kiln.compiler import note_flag_read
from kiln.nn.module import _GLOBAL_HOOKS_SKIPPED, Module


class OptimizedModule(Module):
    def __init__(self, mod: Module, compiled) -> None:
        super().__init__()
        self._orig_mod = mod                               # the only child: `_orig_mod.` keys
        object.__setattr__(self, "_compiled", compiled)    # not a submodule

    def forward(self, *args, **kwargs):
        # global module hooks ran on this wrapper: the original's call skips them (torch fires
        # them once, on the OptimizedModule)
        inner = id(self._orig_mod)
        skipped = inner in _GLOBAL_HOOKS_SKIPPED
        _GLOBAL_HOOKS_SKIPPED.add(inner)
        try:
            return self.__dict__["_compiled"](*args, **kwargs)
        finally:
            if not skipped:
                _GLOBAL_HOOKS_SKIPPED.discard(inner)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)               # `_orig_mod` (the registries)
        except AttributeError:
            if name.startswith("__"):
                raise
        return getattr(self.__dict__["_compiled"], name)   # the module's, then compile's

    def __deepcopy__(self, memo):
        """A copy compiles afresh: compiled programs hold kernels that are not copied."""
        compiled = self.__dict__["_compiled"]
        mod = copy.deepcopy(self._orig_mod, memo)
        twin = OptimizedModule(mod, type(compiled)(mod, compiled.backend, compiled.fullgraph))
        memo[id(self)] = twin
        note_flag_read(self)
        for name, value in self.__dict__.items():          # hooks, flags set on the wrapper
            if name not in ("_compiled", "_modules"):
                twin.__dict__[name] = copy.deepcopy(value, memo)
        return twin
