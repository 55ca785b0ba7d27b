"""RMSprop: gradients scaled by a running average of their square, optionally centered."""

from __future__ import annotations

import kiln
from kiln.compiler import untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _add_scaled, _addcdiv_, _check_nonnegative,
                                  _grad, _hyper, _scalar_state)


class RMSprop(Optimizer):
    """`torch.optim.RMSprop`, the single-tensor (for-loop) update."""

    def __init__(self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False):
        _check_nonnegative(lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay, alpha=alpha)
        super().__init__(params, dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps,
                                      centered=centered, weight_decay=weight_decay,
                                      capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable))

    def _update(self, p, group) -> None:
        alpha, momentum = group["alpha"], group["momentum"]
        state = self.state[p]
        if not state:
            with untraced():        # made once, then read like parameters: one trace will do
                state["step"] = _scalar_state(p)
                state["square_avg"] = kiln.zeros_like(p)
                if momentum > 0:
                    state["momentum_buffer"] = kiln.zeros_like(p)
                if group["centered"]:
                    state["grad_avg"] = kiln.zeros_like(p)
        grad = _grad(p, group["maximize"])
        state["step"].add_(1)
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if group["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg.lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt()
        else:
            avg = square_avg.sqrt()
        avg = avg.add(group["eps"])
        if momentum > 0:
            buf = state["momentum_buffer"]
            # (traced: a number the step reads on every call, which OneCycleLR cycles)
            buf.mul_(_hyper(group, "momentum", p)).addcdiv_(grad, avg)
            _add_scaled(p, buf, -_hyper(group, "lr", p))
        elif p.dtype in (kiln.float16, kiln.bfloat16):
            # PyTorch's addcdiv_, whose CPU kernel rounds a half-precision update once
            _addcdiv_(p, grad, avg, -_hyper(group, "lr", p))
        else:
            _add_scaled(p, grad / avg, -_hyper(group, "lr", p))
