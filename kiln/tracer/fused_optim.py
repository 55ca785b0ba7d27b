"""The fused optimizer ops `kiln._fused_adam_`, `kiln._fused_adamw_` and `kiln._fused_sgd_`.

They update lists of tensors in place with one kernel launch per device and dtype
(`kiln.runtime.fused_optim`), in the spirit of PyTorch's ops of the same names, which
`kiln.optim.Adam`, `AdamW` and `SGD` call for cuda parameters in eager mode. As in PyTorch, the
caller advances the step counts (`state_steps`) before the call. The step counts are read on
the host: CPU tensors (PyTorch's default for them) cost no device sync; cuda ones cost one
each. The ops are eager only: a traced training step keeps the per-op update, which the
compiler fuses into the step's program.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kiln.runtime import fused_optim
from kiln.runtime.device import cupy_module
from kiln.tracer.tensor import STATE, Tensor


def _fused_adam_(params: Sequence[Tensor], grads: Sequence[Tensor],
                 exp_avgs: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor],
                 max_exp_avg_sqs: Sequence[Tensor], state_steps: Sequence[Tensor], *,
                 lr: float, beta1: float, beta2: float, weight_decay: float, eps: float,
                 amsgrad: bool, maximize: bool, grad_scale=None, found_inf=None) -> None:
    """Adam's update of every `params[i]` and its moments, in place (L2 weight decay)."""
    _adam("_fused_adam_", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
          lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, False, grad_scale, found_inf)


def _fused_adamw_(params: Sequence[Tensor], grads: Sequence[Tensor],
                  exp_avgs: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor],
                  max_exp_avg_sqs: Sequence[Tensor], state_steps: Sequence[Tensor], *,
                  lr: float, beta1: float, beta2: float, weight_decay: float, eps: float,
                  amsgrad: bool, maximize: bool, grad_scale=None, found_inf=None) -> None:
    """AdamW's update (decoupled weight decay) of every `params[i]` and its moments, in place."""
    _adam("_fused_adamw_", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
          lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, True, grad_scale, found_inf)


def _fused_sgd_(params: Sequence[Tensor], grads: Sequence[Tensor],
                momentum_buffer_list: Sequence[Tensor], *, weight_decay: float,
                momentum: float, lr: float, dampening: float, nesterov: bool, maximize: bool,
                is_first_step: bool, grad_scale=None, found_inf=None) -> None:
    """SGD's update of every `params[i]` (and its momentum buffer, which on the first step
    becomes the gradient, as a fresh buffer does in the per-op update), in place."""
    name = "_fused_sgd_"
    _check_common(name, params, grads, grad_scale, found_inf)
    buffers = list(momentum_buffer_list or [])
    if momentum != 0:
        _check_state(name, "momentum_buffer_list", params, buffers)
    else:
        buffers = [None] * len(params)
    for p in params:
        _check_leaf(name, p)
    if not params:
        return
    hyper = np.array([-lr, momentum, weight_decay, 1 - dampening, float(is_first_step)],
                     np.float64)
    flags = {"MOMENTUM": momentum != 0, "NESTEROV": bool(nesterov), "MAXIMIZE": bool(maximize),
             "WEIGHT_DECAY": weight_decay != 0}
    arrays = [[p._data, _grad_array(g), None, None, None if b is None else b._data]
              for p, g, b in zip(params, grads, buffers)]
    xp = _array_module(params[0])
    fused_optim.SGD(arrays, np.broadcast_to(hyper, (len(params), len(hyper))), flags, xp)
    _bump(params, [b for b in buffers if b is not None])


def _adam(name, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1,
          beta2, weight_decay, eps, amsgrad, maximize, decoupled, grad_scale, found_inf):
    _check_common(name, params, grads, grad_scale, found_inf)
    for what, states in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)) + (
            (("max_exp_avg_sqs", max_exp_avg_sqs),) if amsgrad else ()):
        _check_state(name, what, params, states)
    if len(state_steps) != len(params):
        raise ValueError(f"{name}: expected one step count per parameter, got "
                         f"{len(state_steps)} for {len(params)} parameters")
    for p in params:
        _check_leaf(name, p)
    if not params:
        return
    for what, value in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps),
                        ("weight_decay", weight_decay)):
        if isinstance(value, Tensor):
            raise TypeError(f"{name}: {what} must be a Python number here, not a Tensor; use "
                            "the per-op update (fused=False) for tensor hyperparameters")
    rows: dict = {}         # step count -> hyperparameters (usually one step for the list)
    hyper = np.empty((len(params), 8), np.float64)
    for i, s in enumerate(state_steps):
        step = float(s.item()) if isinstance(s, Tensor) else float(s)
        row = rows.get(step)
        if row is None:
            # in float64 on the host, the numbers the per-op update computes
            bias_correction1 = 1 - beta1 ** step
            bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
            row = rows[step] = (1 - beta1, beta2, weight_decay, 1 - lr * weight_decay,
                                1 - beta2, bias_correction2_sqrt, eps, -lr / bias_correction1)
        hyper[i] = row
    flags = {"AMSGRAD": bool(amsgrad), "MAXIMIZE": bool(maximize),
             "WEIGHT_DECAY": 0 if weight_decay == 0 else 2 if decoupled else 1}
    maxes = list(max_exp_avg_sqs) if amsgrad else [None] * len(params)
    arrays = [[p._data, _grad_array(g), m._data, v._data, None if w is None else w._data]
              for p, g, m, v, w in zip(params, grads, exp_avgs, exp_avg_sqs, maxes)]
    fused_optim.ADAM(arrays, hyper, flags, _array_module(params[0]))
    _bump(params, exp_avgs, exp_avg_sqs, [w for w in maxes if w is not None])


# ----------------------------------------------------------------------------- checks

def _check_common(name: str, params, grads, grad_scale, found_inf) -> None:
    if STATE.tracer is not None:
        raise RuntimeError(f"kiln.{name} runs eagerly only and cannot be traced; a compiled "
                           "training step uses the optimizer's per-op update")
    if grad_scale is not None or found_inf is not None:
        raise NotImplementedError(f"kiln.{name}: grad_scale and found_inf are not supported; "
                                  "unscale the gradients before the step")
    if len(grads) != len(params):
        raise ValueError(f"{name}: expected one gradient per parameter, got {len(grads)} for "
                         f"{len(params)} parameters")
    if not params:
        return
    device, dtype = params[0].device, params[0].dtype
    if dtype.name not in fused_optim.SUPPORTED_DTYPES:
        raise TypeError(f"{name}: parameters of dtype {dtype.name} are not supported (float16, "
                        "float32 or float64)")
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.dtype is not dtype or not (p.device is device or p.device == device):
            raise ValueError(f"{name}: all parameters must share one device and dtype; "
                             f"params[0] is {dtype.name} on {device}, params[{i}] is "
                             f"{p.dtype.name} on {p.device}")
        if not _like(g, p):
            raise ValueError(f"{name}: grads[{i}] must match params[{i}] "
                             f"({dtype.name}{list(p.shape)} on {device}), got {_describe(g)}")
        if not p._data.flags.c_contiguous:
            raise ValueError(f"{name}: params[{i}] {list(p.shape)} is not contiguous; use the "
                             "per-op update (fused=False)")


def _check_state(name: str, what: str, params, states) -> None:
    if len(states) != len(params):
        raise ValueError(f"{name}: expected one of {what} per parameter, got {len(states)} "
                         f"for {len(params)} parameters")
    for i, (p, s) in enumerate(zip(params, states)):
        if not (_like(s, p) and s._data.flags.c_contiguous):
            raise ValueError(f"{name}: {what}[{i}] must be a contiguous tensor like params[{i}] "
                             f"({p.dtype.name}{list(p.shape)} on {p.device}), got "
                             f"{_describe(s)}")


def _like(t, p: Tensor) -> bool:
    """Whether `t` is a tensor of `p`'s shape, dtype and device."""
    return (isinstance(t, Tensor) and t.dtype is p.dtype and t._data.shape == p._data.shape
            and (t.device is p.device or t.device == p.device))


def _describe(t) -> str:
    if not isinstance(t, Tensor):
        return type(t).__name__
    layout = "" if t._data.flags.c_contiguous else " (not contiguous)"
    return f"{t.dtype.name}{list(t.shape)} on {t.device}{layout}"


def _check_leaf(name: str, p: Tensor) -> None:
    if p.requires_grad and STATE.grad_enabled:
        raise RuntimeError(f"{name}: a leaf Variable that requires grad is being used in an "
                           "in-place operation; run the update under kiln.no_grad()")


def _grad_array(g: Tensor):
    data = g._data
    if data.flags.c_contiguous:
        return data
    return cupy_module().ascontiguousarray(data) if g.device.type == "cuda" \
        else np.ascontiguousarray(data)


def _array_module(p: Tensor):
    return cupy_module() if p.device.type == "cuda" else np


def _bump(*lists) -> None:
    """Advance the version counters of the tensors written in place (as `Tensor.add_` does)."""
    for tensors in lists:
        for t in tensors:
            t._version[0] += 1
