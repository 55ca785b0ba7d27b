"""Rprop: resilient backpropagation, per-element step sizes adapted by gradient sign changes."""

from __future__ import annotations

import kiln
from kiln.compiler import untraced
from kiln.optim.optimizer import Optimizer, ParamsT, _check_nonnegative, _grad, _scalar_state


class Rprop(Optimizer):
    """`torch.optim.Rprop`, the single-tensor update."""

    def __init__(self, params: ParamsT, lr: float = 1e-2, etas: tuple = (0.5, 1.2),
                 step_sizes: tuple = (1e-6, 50), *, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False):
        _check_nonnegative(lr=lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        super().__init__(params, dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes),
                                      foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, capturable=capturable))

    def _update(self, p, group) -> None:
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        state = self.state[p]
        if not state:
            with untraced():
                state["step"] = _scalar_state(p)
                state["prev"] = kiln.zeros_like(p)
                state["step_size"] = kiln.full_like(p, group["lr"])
        grad = _grad(p, group["maximize"])
        state["step"].add_(1)
        prev, step_size = state["prev"], state["step_size"]
        sign = (grad * prev).sign()
        factor = kiln.where(sign > 0, etaplus, kiln.where(sign < 0, etaminus, kiln.ones_like(p)))
        step_size.mul_(factor).clamp_(step_size_min, step_size_max)
        # after a sign change the gradient is forgotten: no step now, no sign test next time
        grad = kiln.where(sign < 0, 0.0, grad)
        p.addcmul_(grad.sign(), step_size, value=-1)
        prev.copy_(grad)
