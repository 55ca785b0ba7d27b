"""RAdam: Adam whose adaptive step is switched on once the variance estimate is reliable."""

from __future__ import annotations

import kiln
from kiln.compiler import untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _check_betas, _check_nonnegative,
                                  _decay_add_square, _grad, _hyper, _hyper_pair, _lerp_,
                                  _scalar_state, _step_count)


class RAdam(Optimizer):
    """`torch.optim.RAdam`, the single-tensor update."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False):
        _check_nonnegative(lr=lr, eps=eps, weight_decay=weight_decay)
        _check_betas(betas)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize, capturable=capturable,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      differentiable=differentiable))

    def _update(self, p, group) -> None:
        beta1, beta2 = _hyper_pair(group, "betas", p)   # read on every call
        lr, wd = _hyper(group, "lr", p), group["weight_decay"]
        state = self.state[p]
        if not state:
            with untraced():
                state["step"] = _scalar_state(p)
                state["exp_avg"] = kiln.zeros_like(p)
                state["exp_avg_sq"] = kiln.zeros_like(p)
        grad = _grad(p, group["maximize"])
        state["step"].add_(1)
        step = _step_count(state["step"])
        if wd != 0:
            if group["decoupled_weight_decay"]:
                p.mul_(1 - lr * wd)
            else:
                grad = grad.add(p, alpha=wd)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(exp_avg, grad, 1 - beta1)
        _decay_add_square(exp_avg_sq, grad, beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        corrected = exp_avg / bias_correction1
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
        if isinstance(rho_t, float):
            if rho_t > 5.0:
                rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                        / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
                adaptive = (bias_correction2 ** 0.5) / exp_avg_sq.sqrt().add_(group["eps"])
                p.add_(corrected * lr * adaptive * rect, alpha=-1.0)
            else:
                p.add_(corrected * lr, alpha=-1.0)
            return
        # traced: the step count is a tensor, so the rectification switch is a select
        rect = ((rho_t - 4).clamp_min(0) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).sqrt()
        adaptive = bias_correction2.sqrt() / exp_avg_sq.sqrt().add_(group["eps"])
        scaled = corrected * lr         # (multiplied in eager's order: eager's rounding)
        p.add_(kiln.where(rho_t > 5.0, scaled * adaptive * rect, scaled), alpha=-1.0)
