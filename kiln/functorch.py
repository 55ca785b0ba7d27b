"""functorch's API from before torch.func (`make_functional`, `combine_state_for_ensemble` and
the transforms), for scripts that still `import functorch`: `kiln run` resolves it here.

`make_functional(model)` gives a function of (params, *inputs) and the parameters of a copy of
the model, as functorch does: calling the function runs the copy with the given tensors in
place of its parameters (through `kiln.func.functional_call`), so it composes with `grad`,
`jvp` and `vmap`. The transforms themselves are kiln.func's.
"""

from __future__ import annotations

import copy
import functools
import warnings

import kiln
from kiln import func as _func
from kiln import nn
from kiln.func import functional_call

__all__ = ["FunctionalModule", "FunctionalModuleWithBuffers", "combine_state_for_ensemble",
           "functionalize", "grad", "grad_and_value", "hessian", "jacfwd", "jacrev", "jvp",
           "make_functional", "make_functional_with_buffers", "vjp", "vmap"]


def _deprecated(fn, name: str, instead: str):
    """`fn` warning as functorch's `name` does (FutureWarning naming its torch.func successor)."""
    @functools.wraps(fn)
    def warned(*args, **kwargs):
        warnings.warn(f"We've integrated functorch into PyTorch. As the final step of the "
                      f"integration, `functorch.{name}` is deprecated as of PyTorch 2.0 and will "
                      f"be deleted in a future version of PyTorch >= 2.3. Please use "
                      f"`{instead}` instead; see the PyTorch 2.0 release notes and/or the "
                      f"`torch.func` migration guide for more details "
                      f"https://pytorch.org/docs/main/func.migrating.html", FutureWarning,
                      stacklevel=2)
        return fn(*args, **kwargs)
    return warned


for _name in ("grad", "grad_and_value", "hessian", "jacfwd", "jacrev", "jvp", "vjp", "vmap",
              "functionalize"):
    globals()[_name] = _deprecated(getattr(_func, _name), _name, f"torch.func.{_name}")


def _named(pairs) -> tuple[tuple, tuple]:
    pairs = list(pairs)
    return tuple(n for n, _ in pairs), tuple(t for _, t in pairs)


class FunctionalModule(nn.Module):
    """`func(params, *args, **kwargs)`: the module's copy called with `params` (in the order
    of its named_parameters) as its parameters."""

    def __init__(self, stateless_model: nn.Module, param_names: tuple):
        super().__init__()
        self.stateless_model = stateless_model
        self.param_names = tuple(param_names)

    @staticmethod
    def _create_from(model: nn.Module, disable_autograd_tracking: bool = False):
        model_copy = copy.deepcopy(model)
        names, params = _named(model_copy.named_parameters())
        if disable_autograd_tracking:
            for p in params:
                p.requires_grad_(False)
        return FunctionalModule(model_copy, names), params

    def forward(self, params, *args, **kwargs):
        if len(params) != len(self.param_names):
            raise ValueError(f"FunctionalModule: expected {len(self.param_names)} parameters "
                             f"({', '.join(self.param_names)}), got {len(params)}")
        return functional_call(self.stateless_model, dict(zip(self.param_names, params)),
                               args, kwargs)


class FunctionalModuleWithBuffers(nn.Module):
    """`func(params, buffers, *args, **kwargs)`: the module's copy called with `params` and
    `buffers` (in the order of named_parameters and named_buffers) as its own."""

    def __init__(self, stateless_model: nn.Module, param_names: tuple, buffer_names: tuple):
        super().__init__()
        self.stateless_model = stateless_model
        self.param_names, self.buffer_names = tuple(param_names), tuple(buffer_names)

    @staticmethod
    def _create_from(model: nn.Module, disable_autograd_tracking: bool = False):
        model_copy = copy.deepcopy(model)
        names, params = _named(model_copy.named_parameters())
        buffer_names, buffers = _named(model_copy.named_buffers())
        if disable_autograd_tracking:
            for p in params:
                p.requires_grad_(False)
        return FunctionalModuleWithBuffers(model_copy, names, buffer_names), params, buffers

    def forward(self, params, buffers, *args, **kwargs):
        if len(params) != len(self.param_names) or len(buffers) != len(self.buffer_names):
            raise ValueError(f"FunctionalModuleWithBuffers: expected {len(self.param_names)} "
                             f"parameters and {len(self.buffer_names)} buffers, got "
                             f"{len(params)} and {len(buffers)}")
        given = dict(zip(self.param_names, params))
        given.update(zip(self.buffer_names, buffers))
        return functional_call(self.stateless_model, given, args, kwargs)


@functools.partial(_deprecated, name="make_functional", instead="torch.func.functional_call")
def make_functional(model: nn.Module, disable_autograd_tracking: bool = False):
    """(func, params) for a module without buffers (functorch.make_functional)."""
    if any(True for _ in model.buffers()):
        raise RuntimeError("make_functional(model): `model` has buffers. Please use "
                           "make_functional_with_buffers(model) instead.")
    return FunctionalModule._create_from(model, disable_autograd_tracking)


@functools.partial(_deprecated, name="make_functional_with_buffers",
                   instead="torch.func.functional_call")
def make_functional_with_buffers(model: nn.Module, disable_autograd_tracking: bool = False):
    """(func, params, buffers) (functorch.make_functional_with_buffers)."""
    return FunctionalModuleWithBuffers._create_from(model, disable_autograd_tracking)


@functools.partial(_deprecated, name="combine_state_for_ensemble",
                   instead="torch.func.stack_module_state")
def combine_state_for_ensemble(models):
    """(func, params, buffers) for same-shaped models: func of the first, each parameter and
    buffer stacked over the models along a new first dim and detached, for
    `vmap(func)(params, buffers, x)` (functorch.combine_state_for_ensemble)."""
    models = list(models)
    if not models:
        raise RuntimeError("combine_state_for_ensemble: Expected at least one model, got 0.")
    if not (all(m.training for m in models) or all(not m.training for m in models)):
        raise RuntimeError("combine_state_for_ensemble: Expected all models to have the same "
                           "training/eval mode.")
    if not all(type(m) is type(models[0]) for m in models):
        raise RuntimeError("combine_state_for_ensemble: Expected all models to be of the same "
                           "class.")
    funcs, params, buffers = zip(*[FunctionalModuleWithBuffers._create_from(m) for m in models])
    params = tuple(kiln.stack(list(ps)).detach() for ps in zip(*params))
    buffers = tuple(kiln.stack(list(bs)).detach() for bs in zip(*buffers))
    return funcs[0], params, buffers
