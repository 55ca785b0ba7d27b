"""Weight pruning (`torch.nn.utils.prune`): a parameter `name` becomes `name_orig` (the trained
values) and a buffer `name_mask`, and a forward pre-hook recomputes `module.name` as
orig * mask before every call, so the pruned entries stay zero and get no gradient.

Pruning the same tensor again composes the masks (a `PruningContainer` is the hook then, the
new method acting only on what is left); `remove` makes the pruning permanent.

Ties: the deterministic methods choose through `kiln.topk`, which is stable, so among entries
(or channels) of equal importance the ones at lower flat index are pruned first (L1Unstructured)
or kept first (LnStructured). PyTorch's choice among exact ties depends on its partial sort.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Iterable, Iterator

import kiln
from kiln import Tensor
from kiln.nn.module import Module
from kiln.nn.utils.convert_parameters import parameters_to_vector

__all__ = ["BasePruningMethod", "PruningContainer", "Identity", "RandomUnstructured",
           "L1Unstructured", "RandomStructured", "LnStructured", "CustomFromMask", "identity",
           "random_unstructured", "l1_unstructured", "random_structured", "ln_structured",
           "global_unstructured", "custom_from_mask", "remove", "is_pruned"]


class BasePruningMethod(ABC):
    """A way of choosing which entries of a tensor to zero. Subclasses set `PRUNING_TYPE`
    ("unstructured", "structured" with a `dim`, or "global") and implement `compute_mask`.

    An instance applied to a module is that module's forward pre-hook for the tensor named
    `_tensor_name`.
    """

    PRUNING_TYPE: str
    _tensor_name: str | None = None

    def __call__(self, module: Module, inputs) -> None:
        setattr(module, self._tensor_name, self.apply_mask(module))

    @abstractmethod
    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """The mask for `t` (1 keeps an entry, 0 prunes it), on top of `default_mask` (the
        mask from earlier pruning, all ones the first time)."""

    def apply_mask(self, module: Module) -> Tensor:
        """The pruned tensor, `name_orig * name_mask`, from the module's stored pair."""
        if self._tensor_name is None:
            raise RuntimeError(f"{type(self).__name__} has not been applied to a tensor yet; "
                               f"call {type(self).__name__}.apply(module, name, ...) first")
        mask = getattr(module, self._tensor_name + "_mask")
        orig = getattr(module, self._tensor_name + "_orig")
        return mask.to(dtype=orig.dtype) * orig

    @classmethod
    def apply(cls, module: Module, name: str, *args, importance_scores: Tensor | None = None,
              **kwargs) -> "BasePruningMethod":
        """Prune `module.name` with `cls(*args, **kwargs)`, composing with earlier pruning of
        the same tensor. Masks are chosen from `importance_scores` (default: the tensor)."""
        hook_id, previous = _pruning_hook(module, name)
        method = cls(*args, **kwargs)
        method._tensor_name = name
        if isinstance(previous, PruningContainer):
            previous.add_pruning_method(method)
            method = previous
        elif previous is not None:
            method = PruningContainer(previous, method)
        orig = getattr(module, name)
        if importance_scores is None:
            importance_scores = orig
        elif importance_scores.shape != orig.shape:
            raise ValueError(f"importance_scores should have the same shape as parameter "
                             f"{name} of {module}, got {tuple(importance_scores.shape)} vs "
                             f"{tuple(orig.shape)}")
        # the mask first: a method that raises leaves the module as it was
        old_mask = None if previous is None else getattr(module, name + "_mask")
        default_mask = kiln.ones_like(orig) if old_mask is None else old_mask.detach().clone()
        try:
            with kiln.no_grad():
                mask = method.compute_mask(importance_scores, default_mask=default_mask)
        except Exception:
            if method is previous:
                previous._pruning_methods = previous._pruning_methods[:-1]
            raise
        if not isinstance(mask, Tensor):
            raise TypeError(f"{type(method).__name__}.compute_mask returned "
                            f"{type(mask).__name__}; it must return a Tensor")
        if previous is None:
            module.register_parameter(name + "_orig", orig)
            del module._parameters[name]
        module.register_buffer(name + "_mask", mask)
        setattr(module, name, method.apply_mask(module))
        if hook_id is not None:
            del module._forward_pre_hooks[hook_id]
        module.register_forward_pre_hook(method)
        return method

    def prune(self, t: Tensor, default_mask: Tensor | None = None,
              importance_scores: Tensor | None = None) -> Tensor:
        """`t` with this method's mask applied (no module involved)."""
        if importance_scores is None:
            importance_scores = t
        elif importance_scores.shape != t.shape:
            raise ValueError(f"importance_scores should have the same shape as tensor t, got "
                             f"{tuple(importance_scores.shape)} vs {tuple(t.shape)}")
        if default_mask is None:
            default_mask = kiln.ones_like(t)
        with kiln.no_grad():
            mask = self.compute_mask(importance_scores, default_mask=default_mask)
        return t * mask

    def remove(self, module: Module) -> None:
        """Make the pruning permanent: `name` becomes a plain parameter holding orig * mask
        (the same Parameter object as `name_orig`), and `name_orig`/`name_mask` go away."""
        if self._tensor_name is None:
            raise RuntimeError(f"Module {module} has to be pruned before pruning can be "
                               f"removed")
        name = self._tensor_name
        pruned = self.apply_mask(module)
        if hasattr(module, name):
            delattr(module, name)
        orig = module._parameters.pop(name + "_orig")
        orig.data = pruned.data
        del module._buffers[name + "_mask"]
        setattr(module, name, orig)


class PruningContainer(BasePruningMethod):
    """The pruning methods applied in turn to one tensor; each new one acts only on what the
    earlier ones left (unpruned entries, or channels not yet all zero)."""

    def __init__(self, *methods: BasePruningMethod) -> None:
        self._pruning_methods: tuple[BasePruningMethod, ...] = ()
        if methods:
            self._tensor_name = methods[0]._tensor_name
        for method in methods:
            self.add_pruning_method(method)

    def add_pruning_method(self, method: BasePruningMethod) -> None:
        if not isinstance(method, BasePruningMethod) and method is not None:
            raise TypeError(f"{type(method)} is not a BasePruningMethod subclass")
        if method is not None:
            if self._tensor_name is None:
                self._tensor_name = method._tensor_name
            elif self._tensor_name != method._tensor_name:
                raise ValueError(f"Can only add pruning methods acting on the parameter named "
                                 f"'{self._tensor_name}' to PruningContainer {self}. Found "
                                 f"'{method._tensor_name}'")
        self._pruning_methods += (method,)

    def __len__(self) -> int:
        return len(self._pruning_methods)

    def __iter__(self) -> Iterator[BasePruningMethod]:
        return iter(self._pruning_methods)

    def __getitem__(self, index):
        return self._pruning_methods[index]

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """The last method's mask, computed on the part of `t` the earlier mask left, written
        into a copy of that mask."""
        method = self._pruning_methods[-1]
        mask = default_mask.to(dtype=t.dtype).clone()
        region = _unpruned_region(method, default_mask)
        partial = method.compute_mask(t[region], default_mask=default_mask[region])
        mask[region] = partial.to(dtype=mask.dtype)
        return mask


def _unpruned_region(method: BasePruningMethod, mask: Tensor):
    """The index selecting what `method` may still prune under `mask`."""
    kind = method.PRUNING_TYPE
    if kind == "unstructured":
        return mask == 1
    if kind == "global":
        return (slice(None),) * mask.dim()
    if kind == "structured":
        if not hasattr(method, "dim"):
            raise AttributeError('Pruning methods of PRUNING_TYPE "structured" need to have the '
                                 'attribute `dim` defined.')
        _check_structured(mask)
        dim = _check_dim(mask, method.dim)
        # channels already pruned entirely stay out of the new choice
        others = [d for d in range(mask.dim()) if d != dim]
        region = [slice(None)] * mask.dim()
        region[dim] = mask.sum(dim=others) != 0
        return tuple(region)
    raise ValueError(f"Unrecognized PRUNING_TYPE {kind}")


class Identity(BasePruningMethod):
    """Prune nothing: the reparametrization (name_orig, name_mask of ones) alone."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask

    @classmethod
    def apply(cls, module: Module, name: str) -> "Identity":  # type: ignore[override]
        return super().apply(module, name)


class _Unstructured(BasePruningMethod):
    """Prune `amount` entries (a count, or a fraction of the tensor), those `_chosen` picks."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: int | float) -> None:
        _check_amount(amount)
        self.amount = amount

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        count = _amount_to_count(self.amount, t.nelement())
        flat = default_mask.reshape(-1).clone()
        if count:
            flat[self._chosen(t, count)] = 0
        return flat.view(default_mask.shape)


class RandomUnstructured(_Unstructured):
    """Prune `amount` entries (a count, or a fraction of the tensor) chosen at random."""

    def _chosen(self, t: Tensor, count: int) -> Tensor:
        # the entries with the largest of uniform draws, as PyTorch picks them (its numbers)
        return kiln.topk(kiln.rand_like(t).reshape(-1), k=count).indices

    @classmethod
    def apply(cls, module: Module, name: str,  # type: ignore[override]
              amount: int | float) -> "RandomUnstructured":
        return super().apply(module, name, amount=amount)


class L1Unstructured(_Unstructured):
    """Prune the `amount` entries (a count, or a fraction of the tensor) of smallest absolute
    value."""

    def _chosen(self, t: Tensor, count: int) -> Tensor:
        return kiln.topk(kiln.abs(t).reshape(-1), k=count, largest=False).indices

    @classmethod
    def apply(cls, module: Module, name: str, amount: int | float,  # type: ignore[override]
              importance_scores: Tensor | None = None) -> "L1Unstructured":
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


class RandomStructured(BasePruningMethod):
    """Prune `amount` whole channels (slices along `dim`; a count or a fraction) chosen at
    random."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount: int | float, dim: int = -1) -> None:
        _check_amount(amount)
        self.amount, self.dim = amount, dim

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        _check_structured(t)
        dim = _check_dim(t, self.dim)
        channels = t.shape[dim]
        count = _amount_to_count(self.amount, channels)
        if not count:
            return default_mask
        # a uniform draw per channel; those at or below the count-th smallest go (PyTorch's)
        prob = kiln.rand(channels)
        keep = (prob > kiln.kthvalue(prob, count).values).to(t.device)
        return _channel_mask(t, dim, keep) * default_mask.to(dtype=t.dtype)

    @classmethod
    def apply(cls, module: Module, name: str, amount: int | float,  # type: ignore[override]
              dim: int = -1) -> "RandomStructured":
        return super().apply(module, name, amount=amount, dim=dim)


class LnStructured(BasePruningMethod):
    """Prune the `amount` channels (slices along `dim`; a count or a fraction) of smallest
    L`n` norm (`n` as `kiln.norm`'s `p`: an int, a float, inf, -inf or "fro")."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount: int | float, n, dim: int = -1) -> None:
        _check_amount(amount)
        self.amount, self.n, self.dim = amount, n, dim

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        _check_structured(t)
        dim = _check_dim(t, self.dim)
        channels = t.shape[dim]
        count = _amount_to_count(self.amount, channels)
        if not count:
            return default_mask
        norms = kiln.norm(t, p=self.n, dim=[d for d in range(t.dim()) if d != dim])
        largest = kiln.topk(norms, k=channels - count, largest=True).indices
        keep = kiln.zeros(channels, dtype=kiln.bool, device=t.device)
        keep[largest] = True
        return _channel_mask(t, dim, keep) * default_mask.to(dtype=t.dtype)

    @classmethod
    def apply(cls, module: Module, name: str, amount: int | float, n,  # type: ignore[override]
              dim: int, importance_scores: Tensor | None = None) -> "LnStructured":
        return super().apply(module, name, amount=amount, n=n, dim=dim,
                             importance_scores=importance_scores)


class CustomFromMask(BasePruningMethod):
    """Prune where a given mask (of the tensor's shape) is 0."""

    PRUNING_TYPE = "global"

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        if default_mask.shape != self.mask.shape:
            raise ValueError(f"the mask has shape {tuple(self.mask.shape)} but the tensor "
                             f"being pruned has shape {tuple(default_mask.shape)}")
        return default_mask * self.mask.to(dtype=default_mask.dtype)

    @classmethod
    def apply(cls, module: Module, name: str,  # type: ignore[override]
              mask: Tensor) -> "CustomFromMask":
        return super().apply(module, name, mask=mask)


def identity(module: Module, name: str) -> Module:
    """Reparametrize `module.name` as name_orig * name_mask with a mask of ones."""
    Identity.apply(module, name)
    return module


def random_unstructured(module: Module, name: str, amount: int | float) -> Module:
    """Prune `amount` random entries of `module.name`."""
    RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module: Module, name: str, amount: int | float,
                    importance_scores: Tensor | None = None) -> Module:
    """Prune the `amount` entries of `module.name` of smallest |importance| (default: |value|)."""
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_structured(module: Module, name: str, amount: int | float, dim: int) -> Module:
    """Prune `amount` random channels of `module.name` along `dim`."""
    RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module: Module, name: str, amount: int | float, n, dim: int,
                  importance_scores: Tensor | None = None) -> Module:
    """Prune the `amount` channels of `module.name` along `dim` of smallest L`n` norm."""
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module: Module, name: str, mask: Tensor) -> Module:
    """Prune `module.name` where `mask` is 0."""
    CustomFromMask.apply(module, name, mask)
    return module


def global_unstructured(parameters: Iterable[tuple[Module, str]], pruning_method: type,
                        importance_scores: dict | None = None, **kwargs) -> None:
    """Prune the (module, name) tensors as one: `pruning_method(**kwargs)` (an unstructured
    method, e.g. L1Unstructured with `amount`) chooses among all their entries together, and
    each tensor gets its slice of the joint mask.

    Args:
        parameters: (module, name) pairs.
        pruning_method: an unstructured BasePruningMethod subclass.
        importance_scores: {(module, name): scores}; tensors not in it are scored by value.
    """
    if not isinstance(parameters, Iterable):
        raise TypeError("global_unstructured(): parameters is not an Iterable")
    parameters = list(parameters)       # read three times below: a generator would run dry
    if importance_scores is None:
        importance_scores = {}
    if not isinstance(importance_scores, dict):
        raise TypeError("global_unstructured(): importance_scores must be of type dict")
    method = pruning_method(**kwargs)
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError(f'Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. '
                        f"Found method {pruning_method} of type {method.PRUNING_TYPE}")
    method._tensor_name = "temp"
    with kiln.no_grad():
        scores = parameters_to_vector(
            [importance_scores.get((module, name), getattr(module, name))
             for module, name in parameters])
        earlier = parameters_to_vector([_mask_or_ones(module, name)
                                        for module, name in parameters])
        joint = PruningContainer(method).compute_mask(scores, earlier)
    start = 0
    for module, name in parameters:
        tensor = getattr(module, name)
        count = tensor.numel()
        custom_from_mask(module, name, mask=joint[start:start + count].view_as(tensor))
        start += count


def remove(module: Module, name: str) -> Module:
    """Make the pruning of `module.name` permanent (see BasePruningMethod.remove)."""
    hook_id, hook = _pruning_hook(module, name)
    if hook is None:
        raise ValueError(f"Parameter '{name}' of module {module} has to be pruned before "
                         f"pruning can be removed")
    hook.remove(module)
    del module._forward_pre_hooks[hook_id]
    return module


def is_pruned(module: Module) -> bool:
    """Whether any pruning hook is on `module` or a submodule."""
    return any(isinstance(hook, BasePruningMethod)
               for submodule in module.modules()
               for hook in submodule._forward_pre_hooks.values())


def _pruning_hook(module: Module, name: str) -> tuple[int | None, BasePruningMethod | None]:
    """The forward pre-hook (id, method) pruning `module.name`, or (None, None)."""
    found = [(hook_id, hook) for hook_id, hook in module._forward_pre_hooks.items()
             if isinstance(hook, BasePruningMethod) and hook._tensor_name == name]
    if len(found) > 1:
        raise RuntimeError(f"Avoid adding multiple pruning hooks to the same tensor {name} of "
                           f"module {module}. Use a PruningContainer.")
    return found[0] if found else (None, None)


def _mask_or_ones(module: Module, name: str) -> Tensor:
    """The mask of `module.name` from earlier pruning, or ones if it was never pruned."""
    mask = getattr(module, name + "_mask", None)
    return mask if mask is not None else kiln.ones_like(getattr(module, name))


def _channel_mask(t: Tensor, dim: int, keep: Tensor) -> Tensor:
    """Ones on the channels of `t` along `dim` where `keep` is True, zeros elsewhere."""
    shape = [1] * t.dim()
    shape[dim] = t.shape[dim]
    return kiln.zeros_like(t) + keep.to(dtype=t.dtype).view(shape)


def _check_amount(amount) -> None:
    if not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount}. Must be int or float.")
    if (isinstance(amount, numbers.Integral) and amount < 0) or (
            not isinstance(amount, numbers.Integral)
            and (float(amount) > 1.0 or float(amount) < 0.0)):
        raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a "
                         f"non-negative integer")


def _amount_to_count(amount: int | float, size: int) -> int:
    """How many of `size` units to prune: an int as given, a fraction rounded (half to even)."""
    if isinstance(amount, numbers.Integral):
        if amount > size:
            raise ValueError(f"amount={amount} should be smaller than the number of parameters "
                             f"to prune={size}")
        return int(amount)
    return round(amount * size)


def _check_structured(t: Tensor) -> None:
    if t.dim() <= 1:
        raise ValueError(f"Structured pruning can only be applied to multidimensional tensors. "
                         f"Found tensor of shape {tuple(t.shape)} with {t.dim()} dims")


def _check_dim(t: Tensor, dim: int) -> int:
    """`dim` made non-negative, or IndexError naming the tensor's shape."""
    if not -t.dim() <= dim < t.dim():
        raise IndexError(f"Invalid index {dim} for tensor of size {tuple(t.shape)}")
    return dim % t.dim()
