"""Muon: momentum SGD whose update for a matrix is replaced by its nearest semi-orthogonal
matrix (a Newton-Schulz iteration), for 2-D parameters."""

from __future__ import annotations

import math

import kiln
from kiln import Tensor
from kiln.compiler import untraced
from kiln.optim.optimizer import Optimizer, ParamsT

_A, _B, _C = 3.4445, -4.7750, 2.0315


def _orthogonalize(grad: Tensor, coefficients: tuple, steps: int, eps: float) -> Tensor:
    """The quintic Newton-Schulz iteration towards U V^T of grad = U S V^T. PyTorch runs it in
    bfloat16; kiln runs it in float32, the more accurate of the two."""
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if grad.ndim != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    a, b, c = coefficients
    x = grad.to(kiln.float32)
    tall = grad.shape[0] > grad.shape[1]
    if tall:
        x = x.t()
    x = x / x.norm().clamp_min(eps)
    for _ in range(steps):
        gram = x @ x.t()
        update = gram * b + (gram @ gram) * c
        x = x * a + update @ x
    return (x.t() if tall else x).to(grad.dtype)


def _adjust_lr(lr: float, adjust_lr_fn: str | None, shape) -> float:
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(Optimizer):
    """`torch.optim.Muon` (2-D parameters only; pair it with AdamW for the rest)."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple = (_A, _B, _C), eps: float = 1e-7, ns_steps: int = 5,
                 adjust_lr_fn: str | None = None):
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ("original", "match_rms_adamw"):
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_coefficients=ns_coefficients,
                                      eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only supports 2D parameters whereas we found a "
                                     f"parameter with size: {tuple(p.shape)}")

    def _update(self, p, group) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            with untraced():
                state["momentum_buffer"] = kiln.zeros_like(p)
        buf, momentum = state["momentum_buffer"], group["momentum"]
        buf.lerp_(p.grad, 1 - momentum)
        update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
        update = _orthogonalize(update, group["ns_coefficients"], group["ns_steps"],
                                group["eps"])
        lr = group["lr"]
        p.mul_(1 - lr * group["weight_decay"])
        p.add_(update * -_adjust_lr(lr, group["adjust_lr_fn"], tuple(p.shape)))
