"""Adadelta: per-element step sizes from running averages of squared gradients and updates."""

from __future__ import annotations

import kiln
from kiln.compiler import untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _add_scaled, _check_nonnegative, _grad,
                                  _hyper, _scalar_state)


class Adadelta(Optimizer):
    """`torch.optim.Adadelta`, the single-tensor update."""

    def __init__(self, params: ParamsT, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False,
                 differentiable: bool = False):
        _check_nonnegative(lr=lr, eps=eps, weight_decay=weight_decay)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize, capturable=capturable, foreach=foreach,
                                      differentiable=differentiable))

    def _update(self, p, group) -> None:
        rho, eps = group["rho"], group["eps"]
        state = self.state[p]
        if not state:
            with untraced():
                state["step"] = _scalar_state(p)
                state["square_avg"] = kiln.zeros_like(p)
                state["acc_delta"] = kiln.zeros_like(p)
        state["step"].add_(1)
        grad = _grad(p, group["maximize"])
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        std = square_avg.add(eps).sqrt_()
        delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        _add_scaled(p, delta, -_hyper(group, "lr", p))
