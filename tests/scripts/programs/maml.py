"""MAML on sine-wave regression as learn2learn-free research code writes it: a small MLP whose
inner-loop adaptation is functional (`torch.func.functional_call` with a dict of fast weights
updated by `torch.autograd.grad(loss, params.values(), create_graph=True)`), the outer
meta-loss on each task's query set averaged over the meta-batch and backpropagated through the
inner steps (second order), then the same loop first-order (inner gradients detached). The
meta-training step is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call


def sample_tasks(rng, n_tasks, k_shot):
    amps = rng.uniform(0.5, 3.0, n_tasks).astype(np.float32)
    phases = rng.uniform(0, math.pi, n_tasks).astype(np.float32)
    x = rng.uniform(-5, 5, (n_tasks, 2 * k_shot, 1)).astype(np.float32)
    y = amps[:, None, None] * np.sin(x - phases[:, None, None])
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:]


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(11)
    model = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 1))
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    meta_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner_lr, inner_steps = 0.01, 2

    def adapt(x_s, y_s, first_order):
        params = dict(model.named_parameters())
        for _ in range(inner_steps):
            loss = F.mse_loss(functional_call(model, params, (x_s,)), y_s)
            grads = torch.autograd.grad(loss, params.values(), create_graph=not first_order)
            params = {name: p - inner_lr * g
                      for (name, p), g in zip(params.items(), grads)}
        return params

    def meta_step(x_s, y_s, x_q, y_q, first_order):
        meta_opt.zero_grad()
        meta_loss = 0.
        for i in range(x_s.shape[0]):
            fast = adapt(x_s[i], y_s[i], first_order)
            meta_loss = meta_loss + F.mse_loss(functional_call(model, fast, (x_q[i],)), y_q[i])
        meta_loss = meta_loss / x_s.shape[0]
        meta_loss.backward()
        meta_opt.step()
        return meta_loss

    if compile:
        meta_step = torch.compile(meta_step)
    losses = []
    for first_order in (False, True):
        for _ in range(4):
            losses.append(meta_step(*sample_tasks(rng, 3, 5), first_order).item())

    # adaptation at test time on a new task, after meta-training
    x_s, y_s, x_q, y_q = sample_tasks(rng, 1, 5)
    fast = adapt(x_s[0], y_s[0], first_order=True)
    with torch.no_grad():
        before = F.mse_loss(model(x_q[0]), y_q[0])
        after = F.mse_loss(functional_call(model, fast, (x_q[0],)), y_q[0])
    values = {"w0": model[0].weight.detach().clone(), "w4": model[4].weight.detach().clone(),
              "before": before, "after": after}
    return {"losses": losses, "values": values, "initial_state": initial}
