"""Parametrizations (`torch.nn.utils.parametrize`): a module's tensor computed on access from
stored originals, e.g. a weight kept as (magnitude, direction) or normalized by its spectral
norm. The module's class is swapped for a subclass with a property per parametrized name, as
PyTorch does, so `module.weight` reads like a plain attribute and state_dict keys match
(`parametrizations.weight.original`, `original0`, ...)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import kiln
from kiln import Tensor
from kiln.nn.containers import ModuleDict, ModuleList
from kiln.nn.module import Module
from kiln.nn.parameter import Parameter

__all__ = ["ParametrizationList", "register_parametrization", "remove_parametrizations",
           "is_parametrized", "type_before_parametrizations", "cached",
           "transfer_parametrizations_and_params"]

_cache_enabled = 0
_cache: dict = {}


@contextmanager
def cached() -> Iterator[None]:
    """Within the block, each parametrized tensor is computed once and reused."""
    global _cache_enabled
    _cache_enabled += 1
    try:
        yield
    finally:
        _cache_enabled -= 1
        if not _cache_enabled:
            _cache.clear()


class ParametrizationList(ModuleList):
    """The parametrizations of one tensor, applied in order to its stored original(s)."""

    def __init__(self, modules, original: Tensor, unsafe: bool = False) -> None:
        super().__init__(modules)
        self.unsafe = unsafe
        with kiln.no_grad():
            new = original
            for module in reversed(list(self)):
                if hasattr(module, "right_inverse"):
                    try:
                        new = module.right_inverse(new)
                    except NotImplementedError:
                        pass    # as PyTorch: registering keeps the value, as if the identity
        self.is_tensor = isinstance(new, Tensor)
        self.ntensors = 1 if self.is_tensor else len(new)
        if self.is_tensor:
            # keep the original object (an optimizer may hold it), with the new values
            if new is not original:
                with kiln.no_grad():
                    original.data = new.detach().clone()
            self._store("original", original, original)
        else:
            for i, value in enumerate(new):
                self._store(f"original{i}", value, original)

    def _store(self, name: str, value: Tensor, like: Tensor) -> None:
        if isinstance(like, Parameter):
            param = value if isinstance(value, Parameter) else Parameter(
                value.detach().clone(), like.requires_grad)
            self.register_parameter(name, param)
        else:
            self.register_buffer(name, value)

    def right_inverse(self, value: Tensor) -> None:
        """Store `value` as the originals (assignment to the parametrized attribute)."""
        with kiln.no_grad():
            for module in reversed(list(self)):
                if hasattr(module, "right_inverse"):
                    value = module.right_inverse(value)
                elif not self.unsafe:
                    raise RuntimeError(f"parametrization {type(module).__name__} does not "
                                       f"implement right_inverse.")
            if self.is_tensor:
                self.original.copy_(value)
            else:
                for i, v in enumerate(value):
                    getattr(self, f"original{i}").copy_(v)

    def forward(self) -> Tensor:
        if self.is_tensor:
            x = self[0](self.original)
        else:
            x = self[0](*(getattr(self, f"original{i}") for i in range(self.ntensors)))
        for module in list(self)[1:]:
            x = module(x)
        return x


def _property(name: str) -> property:
    def get(self):
        if _cache_enabled:
            key = (id(self), name)
            if key not in _cache:
                _cache[key] = self.parametrizations[name]()
            return _cache[key]
        return self.parametrizations[name]()

    def set(self, value):
        self.parametrizations[name].right_inverse(value)
    return property(get, set)


def is_parametrized(module: Module, tensor_name: str | None = None) -> bool:
    parametrizations = module.__dict__.get("_modules", {}).get("parametrizations")
    if not isinstance(parametrizations, ModuleDict):
        return False
    return True if tensor_name is None else tensor_name in parametrizations


def type_before_parametrizations(module: Module) -> type:
    cls = type(module)
    return cls.__bases__[0] if is_parametrized(module) else cls


def register_parametrization(module: Module, tensor_name: str, parametrization: Module, *,
                             unsafe: bool = False) -> Module:
    """Make `module.<tensor_name>` the output of `parametrization` on the stored original."""
    if is_parametrized(module, tensor_name):
        plist = module.parametrizations[tensor_name]
        plist.append(parametrization)
        return module
    if tensor_name in module._parameters or tensor_name in module._buffers:
        original = getattr(module, tensor_name)
    else:
        raise ValueError(f"Module '{module}' has no parameter or buffer with name "
                         f"'{tensor_name}'")
    if not unsafe:
        with kiln.no_grad():
            check = parametrization(original) if not hasattr(parametrization,
                                                             "right_inverse") else None
        if check is not None and (not isinstance(check, Tensor)
                                  or tuple(check.shape) != tuple(original.shape)):
            raise ValueError("Registering a parametrization may not change the shape of the "
                             "tensor, unless `unsafe` flag is enabled.")
    module._parameters.pop(tensor_name, None)
    module._buffers.pop(tensor_name, None)
    if not is_parametrized(module):
        cls = type(module)
        module.__class__ = type(f"Parametrized{cls.__name__}", (cls,), {})
        module.parametrizations = ModuleDict()
    module.parametrizations[tensor_name] = ParametrizationList([parametrization], original,
                                                               unsafe)
    setattr(type(module), tensor_name, _property(tensor_name))
    return module


def remove_parametrizations(module: Module, tensor_name: str,
                            leave_parametrized: bool = True) -> Module:
    """Make `tensor_name` a plain tensor again: its current (parametrized) value, or the
    stored original with leave_parametrized=False. A single original keeps its object (a
    parameter stays one, as does a buffer, so an optimizer holding it still does); a value
    computed from several originals (`weight_norm`'s g and v) becomes a parameter where it
    requires grad, and a buffer otherwise (under `no_grad`, as PyTorch's)."""
    if not is_parametrized(module, tensor_name):
        raise ValueError(f"Module {module} does not have a parametrization on {tensor_name}")
    plist = module.parametrizations[tensor_name]
    if plist.is_tensor:
        original = plist.original
        if leave_parametrized:
            with kiln.no_grad():
                original.data = getattr(module, tensor_name).detach().clone()
    else:
        if not leave_parametrized:
            raise ValueError("Cannot leave unparametrized (`leave_parametrized=False`) a "
                             "tensor that is parametrized in terms of a sequence of tensors.")
        value = getattr(module, tensor_name)       # (in the caller's grad mode)
        original = Parameter(value.detach()) if value.requires_grad else value.detach()
    delattr(type(module), tensor_name)
    del module.parametrizations[tensor_name]
    if isinstance(original, Parameter):
        module.register_parameter(tensor_name, original)
    else:
        module.register_buffer(tensor_name, original)
    if not len(module.parametrizations):
        del module._modules["parametrizations"]
        module.__class__ = type(module).__bases__[0]
    return module


def transfer_parametrizations_and_params(from_module: Module, to_module: Module,
                                         tensor_name: str | None = None) -> Module:
    """Give `to_module` the parametrizations (and stored originals) of `from_module`."""
    names = [tensor_name] if tensor_name is not None else list(from_module.parametrizations)
    for name in names:
        source = from_module.parametrizations[name]
        if not is_parametrized(to_module, name):
            register_parametrization(to_module, name, source[0], unsafe=True)
            for extra in list(source)[1:]:
                register_parametrization(to_module, name, extra, unsafe=True)
        target = to_module.parametrizations[name]
        with kiln.no_grad():
            for key, value in source.named_parameters(recurse=False):
                getattr(target, key).copy_(value)
    return to_module
