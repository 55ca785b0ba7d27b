"""Stochastic Weight Averaging and EMA (`torch.optim.swa_utils`): a running average of a model's
weights (`AveragedModel`), the constant-rate schedule SWA trains under (`SWALR`), and one pass
over the data to refresh BatchNorm statistics for the averaged weights (`update_bn`)."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Sequence

import kiln
from kiln import Tensor, nn
from kiln.optim.lr_scheduler import LRScheduler, _per_group
from kiln.optim.optimizer import Optimizer

__all__ = ["AveragedModel", "update_bn", "SWALR", "get_ema_multi_avg_fn",
           "get_swa_multi_avg_fn", "get_ema_avg_fn", "get_swa_avg_fn"]

TensorList = Sequence[Tensor]
AvgFn = Callable[[Tensor, Tensor, "Tensor | int"], Tensor]
MultiAvgFn = Callable[[TensorList, TensorList, "Tensor | int"], None]

# The BatchNorm layers whose running statistics `update_bn` recomputes (PyTorch's _BatchNorm
# subclasses; instance norm keeps its own statistics, as in PyTorch). The lazy variants
# subclass these.
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(f"Invalid decay value {decay} provided. Please provide a value in "
                         f"[0,1] range.")


def _write(target: Tensor, value: Tensor) -> None:
    """Store `value` into `target` in place, cast to its dtype (an integer buffer truncates, as
    PyTorch's copy_ does)."""
    with kiln.no_grad():
        target.copy_(value.to(target.dtype))


def get_ema_multi_avg_fn(decay: float = 0.999) -> MultiAvgFn:
    """An in-place update of lists of averaged tensors: ema = decay * ema + (1 - decay) * new.

    Args:
        decay: how much of the running average each update keeps, in [0, 1].
    """
    _check_decay(decay)

    def ema_update(ema_params: TensorList, current_params: TensorList, _num_averaged) -> None:
        with kiln.no_grad():
            for ema, current in zip(ema_params, current_params):
                if ema.dtype.is_floating_point:
                    ema.lerp_(current, 1 - decay)
                else:
                    _write(ema, ema * decay + current * (1 - decay))
    return ema_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    """An in-place update of lists of averaged tensors to the equal-weight mean of all the
    models seen: avg += (new - avg) / (n + 1), n being the number averaged so far."""
    def swa_update(averaged_params: TensorList, current_params: TensorList,
                   num_averaged: Tensor | int) -> None:
        count = num_averaged + 1        # (a tensor count stays one: no value read, compiles)
        with kiln.no_grad():
            for averaged, current in zip(averaged_params, current_params):
                if averaged.dtype.is_floating_point:
                    averaged.lerp_(current, 1.0 / count)
                else:
                    _write(averaged, averaged + (current - averaged) / count)
    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> AvgFn:
    """The EMA of one tensor, returned (not in place): decay * ema + (1 - decay) * new."""
    _check_decay(decay)

    def ema_update(ema_param: Tensor, current_param: Tensor, _num_averaged) -> Tensor:
        with kiln.no_grad():
            return decay * ema_param + (1 - decay) * current_param
    return ema_update


def get_swa_avg_fn() -> AvgFn:
    """The equal-weight running mean of one tensor, returned (not in place)."""
    def swa_update(averaged_param: Tensor, current_param: Tensor,
                   num_averaged: Tensor | int) -> Tensor:
        with kiln.no_grad():
            return averaged_param + (current_param - averaged_param) / (num_averaged + 1)
    return swa_update


class AveragedModel(nn.Module):
    """A copy of `model` whose weights are a running average (SWA by default, or any `avg_fn` /
    `multi_avg_fn`, e.g. EMA) of the weights it is given by `update_parameters`.

    Args:
        model: the model to average; it is deep-copied, so training it leaves this one alone.
        device: where to keep the copy (default: where the model is).
        avg_fn: `avg_fn(averaged, current, n_averaged)` returns the new average of one tensor.
        multi_avg_fn: `multi_avg_fn(averaged_list, current_list, n_averaged)` updates lists
            of tensors (of one device and dtype) in place. At most one of the two.
        use_buffers: average the buffers too (BatchNorm statistics); otherwise they are copied
            from `model` on every update.
    """

    n_averaged: Tensor

    def __init__(self, model: nn.Module, device=None, avg_fn: AvgFn | None = None,
                 multi_avg_fn: MultiAvgFn | None = None, use_buffers: bool = False) -> None:
        super().__init__()
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
        self.module = copy.deepcopy(model)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("n_averaged", kiln.tensor(0, dtype=kiln.int64, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def update_parameters(self, model: nn.Module) -> None:
        """Fold `model`'s current weights into the average (the first call copies them)."""
        if self.use_buffers:
            averaged = [*self.module.parameters(), *self.module.buffers()]
            current = [*model.parameters(), *model.buffers()]
        else:
            averaged = list(self.parameters())
            current = list(model.parameters())
        # (zip stops at the shorter list, as PyTorch's does)
        pairs = [(mine.detach(), theirs.detach().to(mine.device))
                 for mine, theirs in zip(averaged, current)]
        compiling = kiln.compiler.is_compiling()
        if not compiling and int(self.n_averaged) == 0:
            for mine, theirs in pairs:
                _write(mine, theirs)
        else:
            self._average(pairs)
        if compiling:
            # a trace cannot branch on the count (a tensor): it averages, then keeps the
            # model's own weights where nothing was averaged yet, so a compiled training step
            # that updates the average runs whole
            first = self.n_averaged == 0
            for mine, theirs in pairs:
                _write(mine, kiln.where(first, theirs.to(mine.dtype), mine))
        if not self.use_buffers:
            # buffers are not averaged: keep them the source model's
            mine_buffers, their_buffers = list(self.module.buffers()), list(model.buffers())
            if len(mine_buffers) != len(their_buffers):
                raise ValueError(f"update_parameters: the averaged model has "
                                 f"{len(mine_buffers)} buffers but the model passed in has "
                                 f"{len(their_buffers)}; pass a model of the same structure.")
            for mine, theirs in zip(mine_buffers, their_buffers):
                _write(mine, theirs.detach().to(mine.device))
        with kiln.no_grad():
            self.n_averaged.add_(1)

    def _average(self, pairs: list[tuple[Tensor, Tensor]]) -> None:
        if self.multi_avg_fn is not None:
            for mine, theirs in _by_device_and_dtype(pairs):
                self.multi_avg_fn(mine, theirs, self.n_averaged.to(mine[0].device))
        else:
            # the default is PyTorch's CPU path (a division, not foreach lerp), to its last bit
            avg_fn = self.avg_fn if self.avg_fn is not None else get_swa_avg_fn()
            for mine, theirs in pairs:
                _write(mine, avg_fn(mine, theirs, self.n_averaged.to(mine.device)))


def _by_device_and_dtype(pairs: list[tuple[Tensor, Tensor]]) -> list[tuple[list, list]]:
    """The (averaged, current) pairs split into lists of one device and dtype each, in first-seen
    order: what a multi_avg_fn is given."""
    groups: dict[tuple[str, Any], tuple[list, list]] = {}
    for mine, theirs in pairs:
        mine_list, their_list = groups.setdefault((str(mine.device), mine.dtype), ([], []))
        mine_list.append(mine)
        their_list.append(theirs)
    return list(groups.values())


def update_bn(loader: Iterable[Any], model: nn.Module, device=None) -> None:
    """Recompute every BatchNorm layer's running mean and variance with one pass over `loader`
    (the equal-weight average over its batches), e.g. for SWA's averaged weights.

    Args:
        loader: yields tensors, or lists/tuples whose first element is the model's input.
        model: the model whose BatchNorm statistics are reset and re-estimated.
        device: if given, each batch is moved there before the forward pass.
    """
    momenta = {}
    for module in model.modules():
        if isinstance(module, _BATCH_NORMS):
            module.reset_running_stats()
            momenta[module] = module.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None          # a cumulative average over the pass
    with kiln.no_grad():
        for batch in loader:
            if isinstance(batch, (list, tuple)):
                batch = batch[0]
            if device is not None:
                batch = batch.to(device)
            model(batch)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


def _cosine_anneal(t: float) -> float:
    return (1 - math.cos(math.pi * t)) / 2


def _linear_anneal(t: float) -> float:
    return t


# progress t in [0, 1] through the annealing -> how far the rate has moved towards swa_lr
_ANNEALS: dict[str, Callable[[float], float]] = {"cos": _cosine_anneal, "linear": _linear_anneal}


class SWALR(LRScheduler):
    """Anneal each group's rate from where it is to `swa_lr` over `anneal_epochs` steps (cosine
    or linear), then hold it there: the schedule SWA trains under after `swa_start`.

    Args:
        optimizer: the wrapped optimizer.
        swa_lr: the final rate, for all groups or one per group.
        anneal_epochs: steps of annealing (0: jump to swa_lr at once).
        anneal_strategy: "cos" or "linear".
        last_epoch: the index of the last epoch (-1: a fresh run).
    """

    def __init__(self, optimizer: Optimizer, swa_lr: float | list[float],
                 anneal_epochs: int = 10, anneal_strategy: str = "cos",
                 last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        for lr, group in zip(_per_group("swa_lr", optimizer, swa_lr), optimizer.param_groups):
            group["swa_lr"] = lr
        if anneal_strategy not in _ANNEALS:
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got "
                             f"{anneal_strategy}")
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got "
                             f"{anneal_epochs}")
        self._anneal_strategy = anneal_strategy
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    def anneal_func(self, t: float) -> float:
        """How far (0..1) the rate has moved from its starting value to swa_lr at progress t."""
        return _ANNEALS[self._anneal_strategy](t)

    def get_lr(self) -> list[float]:
        # The rate annealing started from is not stored: it is recovered from the current rate
        # (written at the previous step's progress), so the schedule chains after any other.
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        span = max(1, self.anneal_epochs)
        before = self.anneal_func(max(0.0, min(1.0, (step - 1) / span)))
        now = self.anneal_func(max(0.0, min(1.0, step / span)))
        lrs = []
        for group in self.optimizer.param_groups:
            swa_lr = group["swa_lr"]
            start = swa_lr if before == 1 else (group["lr"] - before * swa_lr) / (1 - before)
            lrs.append(swa_lr * now + start * (1 - now))
        return lrs
