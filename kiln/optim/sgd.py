"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

import kiln
from kiln.optim.optimizer import (Optimizer, ParamsT, _add_scaled, _check_nonnegative, _grad,
                                  _hyper, _plus_scaled)



class SGD(Optimizer):
    """`torch.optim.SGD`.

    On cuda parameters in eager mode the update is fused (`kiln._fused_sgd_`: one kernel launch
    per group and dtype; see `_use_fused` for when); CPU parameters, `foreach=False`/
    `fused=False` and a traced step take the single-tensor (for-loop) update.
    """

    _fused_hypers = ("lr", "momentum", "dampening", "weight_decay")

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None):
        _check_nonnegative(lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if fused:
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))

    def _check_sparse_grad(self, group) -> None:
        # a sparse gradient is taken dense (`_grad`): the same update; PyTorch's momentum buffer
        # stays sparse, kiln's is dense. Weight decay would add a dense term, which PyTorch
        # refuses.
        if group["weight_decay"] != 0:
            raise RuntimeError("SGD: weight_decay is not supported with sparse gradients "
                               "(PyTorch: add(sparse, dense) is not supported); set "
                               "weight_decay=0 for the sparse parameters' group")

    def _update(self, p, group) -> None:
        lr = _hyper(group, "lr", p)
        grad = _grad(p, group["maximize"])
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        if group["momentum"] != 0:
            # (traced: a number the step reads on every call, which OneCycleLR cycles; whether
            # it is 0 stays guarded)
            m = _hyper(group, "momentum", p)
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = grad.clone().detach()
                state["momentum_buffer"] = buf
            else:
                buf.mul_(m).add_(grad, alpha=1 - group["dampening"])
            if group["nesterov"]:
                grad = _plus_scaled(grad, buf, m)
            else:
                grad = buf
        _add_scaled(p, grad, -lr)

    def _fused_update(self, params: list, group: dict) -> None:
        """Fused launches for `params` (one device and dtype, all with gradients): one, or two
        on a step where some momentum buffers are made (a new buffer takes the gradient)."""
        momentum = group["momentum"]
        first, later = [], []
        for p in params:
            state = self.state[p]
            if momentum != 0 and state.get("momentum_buffer") is None:
                state["momentum_buffer"] = kiln.empty_like(p)
                first.append(p)
            else:
                later.append(p)
        for batch, is_first in ((later, False), (first, True)):
            if batch:
                buffers = [self.state[p]["momentum_buffer"] for p in batch] if momentum else []
                kiln._fused_sgd_(batch, [p.grad for p in batch], buffers,
                                 weight_decay=group["weight_decay"], momentum=momentum,
                                 lr=group["lr"], dampening=group["dampening"],
                                 nesterov=group["nesterov"], maximize=group["maximize"],
                                 is_first_step=is_first)
