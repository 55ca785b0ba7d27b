"""Activation-checkpoint wrappers (torch.distributed.algorithms._checkpoint.checkpoint_wrapper):
`checkpoint_wrapper(block)` returns a module whose forward runs `block` under
`kiln.utils.checkpoint.checkpoint`, so backward recomputes the block's activations instead of
keeping them; `apply_activation_checkpointing(model, check_fn=...)` wraps the submodules
`check_fn` selects, in place.

The wrapper holds the block as `_checkpoint_wrapped_module` and, as torch's does, hides that
name from state dicts: `state_dict()` keys are the unwrapped model's and `load_state_dict`
takes them, so checkpoints load into the model with or without wrappers (`named_parameters()`
drops the name when called on the wrapper itself, or on an FSDP model, as in torch).
Gradients are those of the unwrapped model (kiln's checkpoint recomputes exactly).
"""

from __future__ import annotations

import functools
from enum import Enum, auto
from typing import Any, Callable, Iterator

from kiln.autograd.graph import save_on_cpu
from kiln.distributed.fsdp.wrap import lambda_auto_wrap_policy, recursive_wrap
from kiln.nn.module import Module
from kiln.nn.parameter import Parameter
from kiln.utils.checkpoint import checkpoint as utils_checkpoint

__all__ = ["CheckpointImpl", "ActivationWrapper", "CheckpointWrapper", "OffloadWrapper",
           "checkpoint_wrapper", "offload_wrapper", "apply_activation_checkpointing"]

_CHECKPOINT_WRAPPED_MODULE = "_checkpoint_wrapped_module"
_CHECKPOINT_PREFIX = _CHECKPOINT_WRAPPED_MODULE + "."


class CheckpointImpl(Enum):
    """torch's two checkpoint implementations. kiln has one (torch's non-reentrant
    behaviour); REENTRANT adds the reentrant variant's argument checks (see
    kiln.utils.checkpoint), the gradients are the same."""

    REENTRANT = auto()
    NO_REENTRANT = auto()


class ActivationWrapper(Module):
    """A module around `module` whose state dict and parameter names are `module`'s own."""

    def __init__(self, module: Module):
        super().__init__()
        self._checkpoint_wrapped_module = module
        self.register_state_dict_post_hook(ActivationWrapper._strip_prefix)
        self.register_load_state_dict_pre_hook(ActivationWrapper._add_prefix)

    def forward(self, *args, **kwargs):
        raise ValueError(f"{type(self).__name__}: subclasses of ActivationWrapper should "
                         "implement forward()")

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get(_CHECKPOINT_WRAPPED_MODULE)
            if inner is None:
                raise
            return getattr(inner, name)

    def __getitem__(self, key):
        return self._checkpoint_wrapped_module[key]

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            yield name.replace(_CHECKPOINT_PREFIX, ""), p

    def _strip_prefix(self, destination: dict, prefix: str, _meta) -> None:
        inner = prefix + _CHECKPOINT_PREFIX
        items = list(destination.items())
        destination.clear()
        for key, value in items:
            destination[prefix + key[len(inner):] if key.startswith(inner) else key] = value

    def _add_prefix(self, state_dict: dict, prefix: str, *_args) -> None:
        for key in list(state_dict):
            if key.startswith(prefix) and not key.startswith(prefix + _CHECKPOINT_PREFIX):
                state_dict[prefix + _CHECKPOINT_PREFIX + key[len(prefix):]] = \
                    state_dict.pop(key)


class CheckpointWrapper(ActivationWrapper):
    """Runs `module` under activation checkpointing (`checkpoint_fn`, by default
    kiln.utils.checkpoint.checkpoint with use_reentrant as `checkpoint_impl` says)."""

    def __init__(self, module: Module, checkpoint_impl: CheckpointImpl =
                 CheckpointImpl.NO_REENTRANT, checkpoint_fn: Callable | None = None,
                 **checkpoint_fn_kwargs):
        super().__init__(module)
        if not isinstance(checkpoint_impl, CheckpointImpl):
            raise TypeError(f"checkpoint_wrapper: checkpoint_impl must be a CheckpointImpl, "
                            f"got {checkpoint_impl!r}")
        self.checkpoint_impl = checkpoint_impl
        if checkpoint_fn is None:
            self.checkpoint_fn = functools.partial(
                utils_checkpoint, use_reentrant=checkpoint_impl is CheckpointImpl.REENTRANT,
                **checkpoint_fn_kwargs)
        else:
            self.checkpoint_fn = functools.partial(checkpoint_fn, **checkpoint_fn_kwargs)

    def forward(self, *args, **kwargs) -> Any:
        module = self._checkpoint_wrapped_module
        if self.checkpoint_impl is CheckpointImpl.REENTRANT and kwargs:
            # the reentrant variant takes positional tensors only: pass the keyword
            # arguments' values positionally and rebuild them inside, as torch's wrapper does
            names, count = list(kwargs), len(args)

            def run(*flat):
                return module(*flat[:count], **dict(zip(names, flat[count:])))
            return self.checkpoint_fn(run, *args, *kwargs.values())
        return self.checkpoint_fn(module, *args, **kwargs)


class OffloadWrapper(ActivationWrapper):
    """Runs `module` with the tensors its backward saves kept in CPU memory
    (kiln.autograd.graph.save_on_cpu; for CPU tensors nothing moves)."""

    def forward(self, *args, **kwargs) -> Any:
        with save_on_cpu(pin_memory=True):
            return self._checkpoint_wrapped_module(*args, **kwargs)


def offload_wrapper(module: Module) -> OffloadWrapper:
    """`module` wrapped to keep its saved activations on the CPU (torch's offload_wrapper)."""
    return OffloadWrapper(module)


def checkpoint_wrapper(module: Module, checkpoint_impl: CheckpointImpl =
                       CheckpointImpl.NO_REENTRANT, checkpoint_fn: Callable | None = None,
                       **checkpoint_fn_kwargs) -> CheckpointWrapper:
    """`module` wrapped to run under activation checkpointing (torch's checkpoint_wrapper)."""
    return CheckpointWrapper(module, checkpoint_impl, checkpoint_fn, **checkpoint_fn_kwargs)


def apply_activation_checkpointing(model: Module,
                                   checkpoint_wrapper_fn: Callable = checkpoint_wrapper,
                                   check_fn: Callable[[Module], bool] = lambda _: True,
                                   auto_wrap_policy: Callable | None = None) -> None:
    """Replace, in place, every submodule of `model` that `check_fn` (or `auto_wrap_policy`)
    selects by `checkpoint_wrapper_fn(submodule)`; `model` itself is never wrapped."""
    if not isinstance(model, Module):
        raise TypeError(f"apply_activation_checkpointing: expected a kiln.nn.Module, got "
                        f"{type(model).__name__}")
    policy = auto_wrap_policy if auto_wrap_policy is not None else functools.partial(
        lambda_auto_wrap_policy, lambda_fn=check_fn)
    recursive_wrap(model, policy, checkpoint_wrapper_fn, set(), ActivationWrapper)
