"""Adamax: Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

import kiln
from kiln.compiler import untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _check_betas, _check_nonnegative, _grad,
                                  _hyper, _hyper_pair, _lerp_, _scalar_state, _step_count)


class Adamax(Optimizer):
    """`torch.optim.Adamax`, the single-tensor update."""

    def __init__(self, params: ParamsT, lr: float = 2e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False,
                 capturable: bool = False):
        _check_nonnegative(lr=lr, eps=eps, weight_decay=weight_decay)
        _check_betas(betas)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable,
                                      capturable=capturable))

    def _update(self, p, group) -> None:
        beta1, beta2 = _hyper_pair(group, "betas", p)   # read on every call
        state = self.state[p]
        if not state:
            with untraced():
                state["step"] = _scalar_state(p)
                state["exp_avg"] = kiln.zeros_like(p)
                state["exp_inf"] = kiln.zeros_like(p)
        grad = _grad(p, group["maximize"])
        state["step"].add_(1)
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        _lerp_(exp_avg, grad, 1 - beta1)
        exp_inf.copy_(kiln.maximum(exp_inf.mul_(beta2), grad.abs().add_(group["eps"])))
        clr = _hyper(group, "lr", p) / (1 - beta1 ** _step_count(state["step"]))
        p.add_(exp_avg / exp_inf * -clr)
