"""A mixture density network as Bishop's inverse-sine toy problem is written with
torch.distributions: the network outputs mixture logits, means and log-scales; the conditional
density is `MixtureSameFamily(Categorical(logits=...), Independent(Normal(loc, scale), 1))` and
the loss its negative `log_prob`, checked against a hand-written `torch.logsumexp` of the
components; Adam with gradient clipping; at the end the mixture's `mean`, `variance`, a draw by
`sample()` and the most probable component's mean. The training step is the compiled
function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal


class MDN(nn.Module):
    def __init__(self, in_dim, out_dim, n_components, hidden=32):
        super().__init__()
        self.k, self.d = n_components, out_dim
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(),
                                  nn.Linear(hidden, hidden), nn.Tanh())
        self.pi = nn.Linear(hidden, n_components)
        self.mu = nn.Linear(hidden, n_components * out_dim)
        self.log_sigma = nn.Linear(hidden, n_components * out_dim)

    def forward(self, x):
        h = self.body(x)
        logits = self.pi(h)
        mu = self.mu(h).view(-1, self.k, self.d)
        sigma = torch.exp(self.log_sigma(h).clamp(-7, 7)).view(-1, self.k, self.d)
        return logits, mu, sigma

    def distribution(self, x):
        logits, mu, sigma = self(x)
        mix = Categorical(logits=logits)
        comp = Independent(Normal(mu, sigma), 1)
        return MixtureSameFamily(mix, comp)


def manual_nll(logits, mu, sigma, y):
    """-log sum_k pi_k N(y | mu_k, sigma_k), through logsumexp."""
    log_pi = F.log_softmax(logits, dim=-1)
    z = (y.unsqueeze(1) - mu) / sigma
    log_n = -0.5 * z.pow(2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(log_pi + log_n.sum(-1), dim=-1).mean()


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(2)
    n = 256
    # the inverse of y = x + 0.3 sin(2 pi x) + noise: several branches for one input
    y_np = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    x_np = (y_np + 0.3 * np.sin(2 * np.pi * y_np)
            + rng.uniform(-0.1, 0.1, (n, 1))).astype(np.float32)
    x = torch.from_numpy(x_np)
    y = torch.from_numpy(np.concatenate([y_np, 2 * y_np ** 2], axis=1))

    model = MDN(1, 2, n_components=5)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

    def train_step(xb, yb):
        optimizer.zero_grad()
        loss = -model.distribution(xb).log_prob(yb).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(4):
        for i in range(0, n, 64):
            losses.append(train_step(x[i:i + 64], y[i:i + 64]).item())

    with torch.no_grad():
        probe = torch.linspace(0, 1, 5).unsqueeze(1)
        dist = model.distribution(probe)
        logits, mu, sigma = model(probe)
        nll = -model.distribution(x[:5]).log_prob(y[:5]).mean()
        nll_manual = manual_nll(*model(x[:5]), y[:5])
        best = mu[torch.arange(5), logits.argmax(-1)]
        torch.manual_seed(1)
        draw = dist.sample((3,))
    values = {"mean": dist.mean, "variance": dist.variance, "best": best,
              "nll": nll, "nll_manual": nll_manual, "draw_shape": str(tuple(draw.shape)),
              "draw": draw, "mixture_probs": dist.mixture_distribution.probs}
    return {"losses": losses, "values": values, "initial_state": initial}
