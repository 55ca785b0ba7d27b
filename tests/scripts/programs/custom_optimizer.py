"""Optimizers as tutorials write them: `class MySGD(torch.optim.Optimizer)` with defaults, a
momentum buffer made in `self.state[p]` on the first step and a `@torch.no_grad()` step that
takes a closure; the compiled train step calls `optimizer.step(closure)`. Beside it Adam with
`amsgrad=True` and `foreach=True`, and AdamW with `fused=False` and `capturable`, as users pass
the flags, each driving its own model through a compiled step."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MySGD(torch.optim.Optimizer):
    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"] != 0:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if group["momentum"] != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(group["momentum"]).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-group["lr"])
        return loss


def make_model():
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 1))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    models = {name: make_model() for name in ("mysgd", "amsgrad", "adamw")}
    if initial_state is not None:
        for name, model in models.items():
            model.load_state_dict(initial_state[name])
    initial = {name: {k: v.clone() for k, v in m.state_dict().items()}
               for name, m in models.items()}
    optimizers = {
        "mysgd": MySGD(models["mysgd"].parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
        "amsgrad": torch.optim.Adam(models["amsgrad"].parameters(), lr=0.02, amsgrad=True,
                                    foreach=True),
        "adamw": torch.optim.AdamW(models["adamw"].parameters(), lr=0.02, fused=False,
                                   foreach=False, weight_decay=0.05),
    }
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(40, 5)).astype(np.float32))
    y = torch.from_numpy(np.sin(rng.normal(size=(40, 1))).astype(np.float32))

    def closure_step(model, optimizer, inputs, target):
        def closure():
            optimizer.zero_grad()
            loss = F.mse_loss(model(inputs), target)
            loss.backward()
            return loss
        return optimizer.step(closure)

    def plain_step(model, optimizer, inputs, target):
        optimizer.zero_grad()
        loss = F.mse_loss(model(inputs), target)
        loss.backward()
        optimizer.step()
        return loss

    steps = {"mysgd": closure_step, "amsgrad": plain_step, "adamw": plain_step}
    if compile:
        steps = {name: torch.compile(fn) for name, fn in steps.items()}
    losses = []
    for epoch in range(4):
        for i in range(0, 40, 10):
            for name in models:
                loss = steps[name](models[name], optimizers[name], x[i:i + 10], y[i:i + 10])
                losses.append(loss.item())
    values = {f"{name}_{k}": v.detach().clone() for name, m in models.items()
              for k, v in m.state_dict().items()}
    values["max_exp_avg_sq"] = optimizers["amsgrad"].state[
        models["amsgrad"][0].weight]["max_exp_avg_sq"].clone()
    values["mysgd_buffer"] = optimizers["mysgd"].state[
        models["mysgd"][0].weight]["momentum_buffer"].clone()
    return {"losses": losses, "values": values, "initial_state": initial}
