"""Adam and AdamW: adaptive moment estimation, with L2 or decoupled weight decay."""

from __future__ import annotations

import kiln
from kiln.compiler import is_compiling, untraced
from kiln.optim.optimizer import (Optimizer, ParamsT, _addcdiv_, _check_betas,
                                  _check_nonnegative, _decay_add_square, _grad, _hyper,
                                  _hyper_pair, _lerp_, _scalar_state, _sqrt, _step_count,
                                  _use_fused)



class Adam(Optimizer):
    """`torch.optim.Adam`.

    On cuda parameters in eager mode the update is fused (`kiln._fused_adam_`: one kernel launch
    per group and dtype, no host sync; see `_use_fused` for when), with the step count kept on
    the CPU, as PyTorch's default (foreach) update keeps it, so reading it costs no sync. CPU
    parameters, `foreach=False`/`fused=False` and a traced step take the single-tensor
    (for-loop) update.
    """

    _fused_hypers = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False):
        _check_nonnegative(lr=lr, eps=eps, weight_decay=weight_decay)
        _check_betas(betas)
        if fused:
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _fused_update(self, params: list, group: dict) -> None:
        """One fused launch for `params` (one device and dtype, all with gradients)."""
        steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = [], [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = kiln.tensor(0.0, dtype=kiln.float32, device="cpu")
                state["exp_avg"] = kiln.zeros_like(p)
                state["exp_avg_sq"] = kiln.zeros_like(p)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = kiln.zeros_like(p)
            elif state["step"].is_cuda:     # made by the per-op update: one read, once
                state["step"] = state["step"].cpu()
            state["step"].add_(1)
            steps.append(state["step"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
        beta1, beta2 = group["betas"]
        update = kiln._fused_adamw_ if group["decoupled_weight_decay"] else kiln._fused_adam_
        update(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
               eps=group["eps"], amsgrad=group["amsgrad"], maximize=group["maximize"])

    def _load_state_dict(self, state_dict) -> None:
        super()._load_state_dict(state_dict)
        # step counts of parameters the fused update takes live on the CPU (read now, once,
        # rather than at the first step)
        for group in self.param_groups:
            if _use_fused(group, self._fused_hypers):
                for p in group["params"]:
                    step = self.state.get(p, {}).get("step")
                    if p.is_cuda and step is not None and step.is_cuda:
                        self.state[p]["step"] = step.cpu()

    def _check_sparse_grad(self, group) -> None:
        raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam "
                           "instead")

    def _update(self, p, group) -> None:
        beta1, beta2 = _hyper_pair(group, "betas", p)
        lr, wd = _hyper(group, "lr", p), group["weight_decay"]
        state = self.state[p]
        if not state:
            with untraced():        # made once, then read like parameters: one trace will do
                state["step"] = _scalar_state(p)
                state["exp_avg"] = kiln.zeros_like(p)
                state["exp_avg_sq"] = kiln.zeros_like(p)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = kiln.zeros_like(p)
        elif is_compiling() and state["step"].device != p.device:
            with untraced():        # a CPU step count of the fused update meets p's tensors
                state["step"] = state["step"].to(p.device)
        grad = _grad(p, group["maximize"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"].add_(1)
        if wd != 0:
            if group["decoupled_weight_decay"]:
                # read on every call, as lr is: a schedule of it (DINO's) needs no new trace
                p.mul_(1 - lr * _hyper(group, "weight_decay", p))
            else:
                grad = grad.add(p, alpha=wd)
        _lerp_(exp_avg, grad, 1 - beta1)
        _decay_add_square(exp_avg_sq, grad, beta2)
        step = _step_count(state["step"])
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = _sqrt(1 - beta2 ** step)
        neg_step_size = -lr / bias_correction1
        if group["amsgrad"]:
            state["max_exp_avg_sq"].copy_(kiln.maximum(state["max_exp_avg_sq"], exp_avg_sq))
            denom = (state["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        if p.dtype in (kiln.bfloat16, kiln.float16):
            # PyTorch's addcdiv_, whose CPU kernel rounds a half-precision update once
            _addcdiv_(p, exp_avg, denom, neg_step_size)
        else:
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
