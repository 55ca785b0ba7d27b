"""Flow matching (rectified flow) on 2-D toy data as the minimal flow-matching notebooks and
repos (the "flow matching in 100 lines" tutorials, rectified-flow demos) write it: times drawn
by `torch.rand`, noise by `torch.randn_like`, the straight path x_t = (1 - t) x0 + t x1 and its
velocity x1 - x0 as the target, a sinusoidal time embedding (`torch.exp` frequencies,
`torch.cat([sin, cos])`) fed with the point through a SiLU MLP, class conditioning with the
label dropped to a null class by `torch.rand(...) < p` and `torch.where` for classifier-free
guidance (half the steps draw logit-normal times, `torch.sigmoid(torch.randn(...))`), MSE on the
velocity, an EMA of the weights updated under `torch.no_grad()` by `p.mul_(d).add_(q, alpha=1 -
d)`, and an Euler sampler under `torch.inference_mode()` from the EMA model with guidance (one
run also under `torch.no_grad()`, by the midpoint rule). The training step is the compiled
function."""
import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None] * 1000.0
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class VelocityNet(nn.Module):
    def __init__(self, dim=2, hidden=64, t_dim=16, num_classes=2):
        super().__init__()
        self.t_dim = t_dim
        self.null_class = num_classes
        self.label_emb = nn.Embedding(num_classes + 1, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(t_dim, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, t, y):
        h = self.inp(x) + self.time_mlp(timestep_embedding(t, self.t_dim)) + self.label_emb(y)
        return self.net(h)


@torch.no_grad()
def ema_update(ema_model, model, decay):
    for ema_p, p in zip(ema_model.parameters(), model.parameters()):
        ema_p.mul_(decay).add_(p, alpha=1 - decay)


def guided_velocity(model, x, t, y, scale):
    null = torch.full_like(y, model.null_class)
    v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
    return v_uncond + scale * (v_cond - v_uncond)


def euler_sample(model, x, y, steps, scale=2.0):
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt)
        x = x + dt * guided_velocity(model, x, t, y, scale)
    return x


def midpoint_sample(model, x, y, steps):
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt)
        x_mid = x + 0.5 * dt * model(x, t, y)
        x = x + dt * model(x_mid, t + 0.5 * dt, y)
    return x


def eight_gaussians(rng, n):
    """Points around eight centers; the class is the center's parity."""
    centers = np.array([(math.cos(a), math.sin(a)) for a in np.arange(8) * math.pi / 4]) * 2.0
    which = rng.integers(0, 8, n)
    pts = centers[which] + 0.1 * rng.standard_normal((n, 2))
    return torch.from_numpy(pts.astype(np.float32)), torch.from_numpy(which % 2)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(8)
    data, labels = eight_gaussians(rng, 256)
    model = VelocityNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ema_model = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def train_step(x1, y, logit_normal):
        x0 = torch.randn_like(x1)
        if logit_normal:
            t = torch.sigmoid(torch.randn(x1.shape[0]))
        else:
            t = torch.rand(x1.shape[0])
        drop = torch.rand(y.shape[0]) < 0.2
        y = torch.where(drop, torch.full_like(y, model.null_class), y)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        loss = F.mse_loss(model(xt, t, y), x1 - x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema_update(ema_model, model, 0.9)
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(4):
        for i, (x1, y) in enumerate(zip(data.split(64), labels.split(64))):
            losses.append(train_step(x1, y, logit_normal=i % 2 == 1).item())

    noise = torch.randn(64, 2)
    classes = torch.arange(64) % 2
    with torch.inference_mode():
        samples = euler_sample(ema_model, noise, classes, steps=20)
        raw_samples = euler_sample(model, noise, classes, steps=20, scale=1.0)
    with torch.no_grad():
        mid = midpoint_sample(ema_model, noise, classes, steps=10)
    radius = samples.norm(dim=1)
    values = {"samples": samples[:8], "raw_samples": raw_samples[:8], "midpoint": mid[:8],
              "mean_radius": radius.mean(), "requires_grad": samples.requires_grad,
              "ema_weight": ema_model.net[-1].weight.clone(),
              "ema_grad": str(ema_model.net[-1].weight.grad)}
    return {"losses": losses, "values": values, "initial_state": initial}
