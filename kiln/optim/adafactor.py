"""Adafactor: Adam-like steps with the second moment of a matrix kept as row and column
factors (memory O(rows + cols)), relative step sizes and update clipping."""

from __future__ import annotations

import math

import numpy as np

import kiln
from kiln import Tensor
from kiln.compiler import note_grads_checked, untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _grad, _hyper, _scalar_state,
                                  _step_count)


class Adafactor(Optimizer):
    """`torch.optim.Adafactor`, the single-tensor update. Eagerly it reads the step count and two
    norms into Python each step, as PyTorch's does; traced, they stay float64 scalars in the
    graph, so a compiled step containing it compiles whole."""

    def __init__(self, params: ParamsT, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False):
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize))

    def step(self, closure=None):
        loss = self._run_closure(closure)
        note_grads_checked()
        with kiln.no_grad():
            for group in self.param_groups:
                eps1 = group["eps"][0]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if p.grad.is_sparse:
                        self._check_sparse_grad(group)
                    if eps1 is None:    # PyTorch fixes it from the group's first parameter
                        eps1 = float(np.finfo(p.dtype.np).eps)
                    self._update_one(p, group, eps1)
        return loss

    def _update_one(self, p, group, eps1: float) -> None:
        # the learning rate as the update reads it: lifted while tracing, so a scheduler's new
        # rate reaches every replay (in the step size and the weight decay alike)
        lr, d, eps2 = _hyper(group, "lr", p), group["d"], group["eps"][1]
        grad = _grad(p, group["maximize"])
        state = self.state[p]
        if not state:
            with untraced():
                state["step"] = _scalar_state(p)
                if grad.ndim > 1:
                    state["row_var"] = kiln.zeros(*grad.shape[:-1], 1, dtype=grad.dtype,
                                                  device=grad.device)
                    state["col_var"] = kiln.zeros(*grad.shape[:-2], 1, grad.shape[-1],
                                                  dtype=grad.dtype, device=grad.device)
                else:
                    state["variance"] = kiln.zeros_like(grad)
        state["step"].add_(1)
        step = _step_count(state["step"])
        if isinstance(step, float):         # eager: the numbers as PyTorch reads them
            one_minus_beta2 = step ** group["beta2_decay"]
            rho = min(lr, 1 / (step ** 0.5))
            alpha = max(eps2, float(p.norm(2).item()) / (p.numel() ** 0.5)) * rho
        else:       # traced: the same numbers as float64 scalars, computed in the graph
            one_minus_beta2 = (step ** group["beta2_decay"]).to(p.dtype)
            rho = 1 / (step ** 0.5)
            rho = kiln.minimum(rho, lr) if isinstance(lr, Tensor) else rho.clamp_max(lr)
            alpha = (p.norm(2).to(kiln.float64) / (p.numel() ** 0.5)).clamp_min(eps2) * rho
        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])
        if grad.ndim > 1:
            row_var, col_var = state["row_var"], state["col_var"]
            row_var.lerp_(kiln.norm(grad, dim=-1, keepdim=True).square()
                          / grad.shape[-1], one_minus_beta2)
            col_var.lerp_(kiln.norm(grad, dim=-2, keepdim=True).square()
                          / grad.shape[-2], one_minus_beta2)
            estimate = (row_var @ col_var) / row_var.mean(-2, keepdim=True).clamp_min(eps1)
        else:
            state["variance"].lerp_(grad * grad, one_minus_beta2)
            estimate = state["variance"].clone()
        update = estimate.clamp_min(eps1 * eps1).rsqrt() * grad
        scale = math.sqrt(update.numel()) * d
        if isinstance(step, float):
            denom = max(1.0, float(update.norm(2).item()) / scale)
            p.add_(update * (-alpha / denom))
        else:
            denom = (update.norm(2).to(kiln.float64) / scale).clamp_min(1.0)
            p.add_(update * (-alpha / denom).to(p.dtype))
