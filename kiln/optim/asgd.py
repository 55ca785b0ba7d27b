"""ASGD: averaged stochastic gradient descent (Polyak-Ruppert averaging in `ax`)."""

from __future__ import annotations

import kiln
from kiln.compiler import untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _check_nonnegative, _grad, _scalar_state,
                                  _step_count)


class ASGD(Optimizer):
    """`torch.optim.ASGD`, the single-tensor update; the average is `state[p]["ax"]`."""

    def __init__(self, params: ParamsT, lr: float = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False):
        _check_nonnegative(lr=lr, weight_decay=weight_decay)
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable,
                                      capturable=capturable))

    def _update(self, p, group) -> None:
        lr, lambd, alpha, t0 = group["lr"], group["lambd"], group["alpha"], group["t0"]
        state = self.state[p]
        if not state:
            with untraced():
                state["step"] = _scalar_state(p)
                state["eta"] = _scalar_state(p, lr)
                state["mu"] = _scalar_state(p, 1.0)
                state["ax"] = kiln.zeros_like(p)
        grad = _grad(p, group["maximize"])
        state["step"].add_(1)
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        eta = _step_count(state["eta"])
        p.mul_(1 - lambd * eta)
        p.add_(grad * -eta)
        mu = state["mu"]
        ax = state["ax"]
        # mu == 1 copies the parameter exactly (PyTorch's branch), else moves the average
        ax.copy_(kiln.where(mu == 1, p, ax + (p - ax) * mu.to(p.dtype)))
        step = _step_count(state["step"])
        state["eta"].copy_(kiln.tensor(lr / ((1 + lambd * lr * step) ** alpha))
                           if isinstance(step, float) else lr / ((1 + lambd * lr * step) ** alpha))
        if isinstance(step, float):
            mu.copy_(kiln.tensor(1 / max(1, step - t0)))
        else:
            mu.copy_(1 / kiln.maximum(step - t0, kiln.ones_like(step)))
