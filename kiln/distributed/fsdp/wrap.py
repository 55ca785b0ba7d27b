"""FSDP1's auto-wrap policies (torch.distributed.fsdp.wrap): which submodules of a model
`FullyShardedDataParallel(model, auto_wrap_policy=...)` wraps in their own FSDP unit, and the
manual `enable_wrap` / `wrap`.

A policy is a callable `policy(module=, recurse=, nonwrapped_numel=)`, as in torch: asked with
recurse=True whether to look inside `module`, and with recurse=False whether to wrap it, where
`nonwrapped_numel` counts the parameters of `module` not already in a wrapped descendant.
Descendants are wrapped before their ancestors (post-order), so a unit's parameters are those
left over by the units inside it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import kiln.nn as nn
from kiln.nn.module import Module

__all__ = ["always_wrap_policy", "lambda_auto_wrap_policy", "transformer_auto_wrap_policy",
           "size_based_auto_wrap_policy", "ModuleWrapPolicy", "CustomPolicy", "enable_wrap",
           "wrap"]


def always_wrap_policy(*args, **kwargs) -> bool:
    """Wrap every submodule."""
    return True


def _module_wrap_policy(module: Module, recurse: bool, nonwrapped_numel: int,
                        module_classes: Iterable[type]) -> bool:
    if recurse:
        return True
    return isinstance(module, tuple(module_classes))


def lambda_auto_wrap_policy(module: Module, recurse: bool, nonwrapped_numel: int,
                            lambda_fn: Callable[[Module], bool]) -> bool:
    """Wrap the submodules for which `lambda_fn(module)` is true."""
    if recurse:
        return True
    return bool(lambda_fn(module))


def transformer_auto_wrap_policy(module: Module, recurse: bool, nonwrapped_numel: int,
                                 transformer_layer_cls: Iterable[type]) -> bool:
    """Wrap every instance of the classes in `transformer_layer_cls` (a transformer's blocks);
    the rest (embeddings, final norm, head) stays in the enclosing unit."""
    return _module_wrap_policy(module, recurse, nonwrapped_numel, transformer_layer_cls)


def _or_policy(module: Module, recurse: bool, nonwrapped_numel: int,
               policies: Iterable[Callable]) -> bool:
    """True when any of `policies` is."""
    return any(policy(module=module, recurse=recurse, nonwrapped_numel=nonwrapped_numel)
               for policy in policies)


def size_based_auto_wrap_policy(module: Module, recurse: bool, nonwrapped_numel: int,
                                min_num_params: int = int(1e8),
                                force_leaf_modules: set | None = None,
                                exclude_wrap_modules: set | None = None) -> bool:
    """Wrap a submodule once it holds at least `min_num_params` parameters not already
    wrapped; never look inside `force_leaf_modules` (MultiheadAttention) nor wrap
    `exclude_wrap_modules` (ModuleList, ModuleDict) themselves."""
    force_leaf = size_based_auto_wrap_policy.FORCE_LEAF_MODULES if force_leaf_modules is None \
        else force_leaf_modules
    exclude = size_based_auto_wrap_policy.EXCLUDE_WRAP_MODULES if exclude_wrap_modules is None \
        else exclude_wrap_modules
    if recurse:
        return not isinstance(module, tuple(force_leaf))
    return nonwrapped_numel >= min_num_params and not isinstance(module, tuple(exclude))


size_based_auto_wrap_policy.EXCLUDE_WRAP_MODULES = {nn.ModuleList, nn.ModuleDict}
size_based_auto_wrap_policy.FORCE_LEAF_MODULES = {nn.MultiheadAttention}


class ModuleWrapPolicy:
    """Wrap every submodule that is an instance of one of `module_classes`."""

    def __init__(self, module_classes: Iterable[type]):
        self._module_classes = set(module_classes)

    def __call__(self, module: Module, recurse: bool, *args, **kwargs) -> bool:
        return _module_wrap_policy(module, recurse, -1, self._module_classes)

    def __repr__(self) -> str:
        names = ", ".join(sorted(c.__name__ for c in self._module_classes))
        return f"ModuleWrapPolicy({{{names}}})"


class CustomPolicy:
    """`lambda_fn(module)` returns False (leave it), True (wrap it) or a dict of keyword
    arguments that override the wrapper's for this unit."""

    def __init__(self, lambda_fn: Callable[[Module], bool | dict[str, Any]]):
        self._lambda_fn = lambda_fn

    def __call__(self, module: Module, recurse: bool, *args, **kwargs):
        if recurse:
            return True
        return self._lambda_fn(module)


def recursive_wrap(module: Module, policy: Callable, wrapper: Callable, ignored: set[int],
                   wrapped_type: type | None = None, **kwargs) -> int:
    """Wrap `module`'s descendants (not `module` itself) that `policy` selects, in place, each
    as `wrapper(child, **kwargs)`; returns how many parameters they took. Instances of
    `wrapped_type` are units already: left alone, and their parameters not counted."""
    wrapped = 0
    for name, child in list(module.named_children()):
        if id(child) in ignored or (wrapped_type is not None and
                                    isinstance(child, wrapped_type)):
            continue
        wrapped += _wrap_subtree(module, name, child, policy, wrapper, ignored, wrapped_type,
                                 kwargs)
    return wrapped


def _wrap_subtree(parent: Module, name: str, module: Module, policy: Callable,
                  wrapper: Callable, ignored: set[int], wrapped_type: type | None,
                  kwargs: dict) -> int:
    numel = _unwrapped_numel(module, wrapped_type)
    if not policy(module=module, recurse=True, nonwrapped_numel=numel):
        return 0
    inner = recursive_wrap(module, policy, wrapper, ignored, wrapped_type, **kwargs)
    decision = policy(module=module, recurse=False, nonwrapped_numel=numel - inner)
    if not decision:
        return inner
    overrides = decision if isinstance(decision, dict) else {}
    setattr(parent, name, wrapper(module, **{**kwargs, **overrides}))
    return numel


def _unwrapped_numel(module: Module, wrapped_type: type | None) -> int:
    """Parameters of `module` not inside a unit already wrapped."""
    taken = set() if wrapped_type is None else {
        id(p) for m in module.modules() if isinstance(m, wrapped_type) for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in taken)


# ----------------------------------------------------------------------------- manual wrapping

_WRAP_CONTEXT: list[tuple[type, dict]] = []


@contextlib.contextmanager
def enable_wrap(*, wrapper_cls: type, **wrapper_kwargs):
    """Inside, `wrap(module)` returns `wrapper_cls(module, **wrapper_kwargs)`."""
    _WRAP_CONTEXT.append((wrapper_cls, wrapper_kwargs))
    try:
        yield
    finally:
        _WRAP_CONTEXT.pop()


def wrap(module: Module, **wrap_overrides) -> Module:
    """`module` wrapped as the enclosing `enable_wrap` says (its keyword arguments updated by
    `wrap_overrides`); outside `enable_wrap`, `module` itself."""
    if not _WRAP_CONTEXT:
        return module
    wrapper_cls, kwargs = _WRAP_CONTEXT[-1]
    return wrapper_cls(module, **{**kwargs, **wrap_overrides})
