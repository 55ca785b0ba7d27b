"""NAdam: Adam with Nesterov momentum and a momentum-decay schedule."""

from __future__ import annotations

import kiln
from kiln.compiler import untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _check_betas, _check_nonnegative,
                                  _decay_add_square, _grad, _hyper, _hyper_pair, _lerp_,
                                  _scalar_state, _step_count)


class NAdam(Optimizer):
    """`torch.optim.NAdam`, the single-tensor update."""

    def __init__(self, params: ParamsT, lr: float = 2e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False):
        _check_nonnegative(lr=lr, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay)
        _check_betas(betas)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable))

    def _update(self, p, group) -> None:
        beta1, beta2 = _hyper_pair(group, "betas", p)   # read on every call
        lr, wd = _hyper(group, "lr", p), group["weight_decay"]
        state = self.state[p]
        if not state:
            with untraced():
                state["step"] = _scalar_state(p)
                state["mu_product"] = _scalar_state(p, 1.0)
                state["exp_avg"] = kiln.zeros_like(p)
                state["exp_avg_sq"] = kiln.zeros_like(p)
        grad = _grad(p, group["maximize"])
        state["step"].add_(1)
        step = _step_count(state["step"])
        bias_correction2 = 1 - beta2 ** step
        if wd != 0:
            if group["decoupled_weight_decay"]:
                p.mul_(1 - lr * wd)
            else:
                grad = grad.add(p, alpha=wd)
        decay = group["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * decay)))
        state["mu_product"].mul_(mu)
        mu_product = _step_count(state["mu_product"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(exp_avg, grad, 1 - beta1)
        _decay_add_square(exp_avg_sq, grad, beta2)
        denom = (exp_avg_sq / bias_correction2).sqrt().add_(group["eps"])
        mu_product_next = mu_product * mu_next
        p.add_(grad / denom * (-lr * (1.0 - mu) / (1.0 - mu_product)))
        p.add_(exp_avg / denom * ((-lr * mu_next) / (1.0 - mu_product_next)))
