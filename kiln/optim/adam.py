"""Adam and AdamW: adaptive moment estimation, with L2 or decoupled weight decay."""

from __future__ import annotations

import kiln
from kiln.compiler import untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _grad, _hyper, _scalar_state, _sqrt,
                                  _step_count)


class Adam(Optimizer):
    """`torch.optim.Adam`, the single-tensor (for-loop) update."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _update(self, p, group) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = _hyper(group, "lr", p), group["weight_decay"]
        state = self.state[p]
        if not state:
            with untraced():        # made once, then read like parameters: one trace will do
                state["step"] = _scalar_state(p)
                state["exp_avg"] = kiln.zeros_like(p)
                state["exp_avg_sq"] = kiln.zeros_like(p)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = kiln.zeros_like(p)
        grad = _grad(p, group["maximize"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"].add_(1)
        if wd != 0:
            if group["decoupled_weight_decay"]:
                p.mul_(1 - lr * wd)
            else:
                grad = grad.add(p, alpha=wd)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = _step_count(state["step"])
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = _sqrt(1 - beta2 ** step)
        neg_step_size = -lr / bias_correction1
        if group["amsgrad"]:
            state["max_exp_avg_sq"].copy_(kiln.maximum(state["max_exp_avg_sq"], exp_avg_sq))
            denom = (state["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        p.add_((exp_avg / denom) * neg_step_size)


class AdamW(Adam):
    """`torch.optim.AdamW`: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)
