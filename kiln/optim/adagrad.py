"""Adagrad: per-coordinate learning rates from the running sum of squared gradients."""

from __future__ import annotations

import kiln
from kiln.optim.optimizer import (Optimizer, ParamsT, _addcdiv_, _check_nonnegative, _grad,
                                  _hyper, _scalar_state, _step_count)


class Adagrad(Optimizer):
    """`torch.optim.Adagrad`, the single-tensor (for-loop) update."""

    def __init__(self, params: ParamsT, lr: float = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None):
        _check_nonnegative(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, initial_accumulator_value=initial_accumulator_value, eps=eps)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps,
                                      weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, fused=fused))

    def _init_state(self, p, group) -> None:
        state = self.state[p]
        if not state:
            state["step"] = _scalar_state(p)
            state["sum"] = kiln.full_like(p, group["initial_accumulator_value"])

    def add_param_group(self, param_group) -> None:
        # PyTorch creates Adagrad's state eagerly, when a group is added
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            self._init_state(p, group)

    def _check_sparse_grad(self, group) -> None:
        # a sparse gradient is taken dense (`_grad`): the rows it does not name get a zero
        # update and a zero added to their sum, which is PyTorch's sparse update
        if group["weight_decay"] != 0:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    def _update(self, p, group) -> None:
        state = self.state[p]
        state["step"].add_(1)
        grad = _grad(p, group["maximize"])
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        step = _step_count(state["step"])
        neg_clr = -_hyper(group, "lr", p) / ((step - 1) * group["lr_decay"] + 1)
        state["sum"].addcmul_(grad, grad, value=1)
        std = state["sum"].sqrt().add_(group["eps"])
        if p.dtype in (kiln.float16, kiln.bfloat16):
            # PyTorch's addcdiv_, whose CPU kernel rounds a half-precision update once
            _addcdiv_(p, grad, std, neg_clr)
        else:
            p.add_((grad / std) * neg_clr)
