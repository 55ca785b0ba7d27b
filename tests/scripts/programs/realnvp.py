"""A RealNVP normalizing flow on 2-D two-moons data as the flow tutorials write it: affine
coupling layers with alternating binary masks (registered buffers), scale and translation nets
(`tanh`-bounded scales), `log_det` summed over the layers, a standard `Normal` base
distribution from `torch.distributions` whose `log_prob(z).sum(1)` gives the likelihood,
negative log-likelihood training with gradient clipping, and sampling by running the couplings
in reverse from `base.sample`. The training step is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Normal


class AffineCoupling(nn.Module):
    def __init__(self, mask, hidden=32):
        super().__init__()
        self.register_buffer("mask", mask)
        dim = mask.numel()
        self.s = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, dim),
                               nn.Tanh())
        self.t = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x_masked = x * self.mask
        s = self.s(x_masked) * (1 - self.mask)
        t = self.t(x_masked) * (1 - self.mask)
        y = x_masked + (1 - self.mask) * (x * torch.exp(s) + t)
        return y, s.sum(dim=1)

    def inverse(self, y):
        y_masked = y * self.mask
        s = self.s(y_masked) * (1 - self.mask)
        t = self.t(y_masked) * (1 - self.mask)
        return y_masked + (1 - self.mask) * ((y - t) * torch.exp(-s))


class RealNVP(nn.Module):
    def __init__(self, n_layers=4):
        super().__init__()
        masks = [torch.tensor([1.0, 0.0]) if i % 2 == 0 else torch.tensor([0.0, 1.0])
                 for i in range(n_layers)]
        self.layers = nn.ModuleList(AffineCoupling(m) for m in masks)
        self.base = Normal(torch.zeros(2), torch.ones(2))

    def forward(self, x):
        log_det = torch.zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def log_prob(self, x):
        z, log_det = self(x)
        return self.base.log_prob(z).sum(dim=1) + log_det

    def sample(self, n):
        z = self.base.sample((n,))
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


def two_moons(rng, n):
    t = rng.uniform(0, math.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], 1) + 0.05 * rng.standard_normal((n, 2))
    return torch.from_numpy(pts.astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(9)
    data = two_moons(rng, 128)
    flow = RealNVP()
    if initial_state is not None:
        flow.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in flow.state_dict().items()}
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-3)

    def train_step(x):
        optimizer.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), max_norm=5.0)
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for x in data.split(32):
            losses.append(train_step(x).item())
    with torch.no_grad():
        z, _ = flow(data[:8])
        roundtrip = data[:8].clone()
        for layer in reversed(flow.layers):
            z = layer.inverse(z)
        samples = flow.sample(16)
    values = {"roundtrip_err": bool((z - roundtrip).abs().max() < 1e-5),
              "samples": samples, "log_prob": flow.log_prob(data[:8]).detach(),
              "s_last": flow.layers[3].s[2].weight.detach().clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
