"""An exact Gaussian-process regression as GP code without GPyTorch writes it, in float64:
positive hyperparameters through `softplus` of raw parameters (lengthscale, outputscale, noise
as `nn.Parameter`s of a module), an RBF kernel from `torch.cdist`, the Cholesky factor by
`torch.linalg.cholesky` with jitter, alpha = K^-1 y by `torch.cholesky_solve`, the negative
log-marginal likelihood 0.5 y^T alpha + sum(log diag L) + n/2 log(2 pi) (the log-determinant
from the factor's diagonal, checked against `torch.logdet`), Adam on the hyperparameters, then
the predictive mean and variance by `torch.linalg.solve_triangular`. The training step is the
compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ExactGP(nn.Module):
    def __init__(self):
        super().__init__()
        self.raw_lengthscale = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
        self.raw_outputscale = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
        self.raw_noise = nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))
        self.mean_constant = nn.Parameter(torch.zeros((), dtype=torch.float64))

    @property
    def lengthscale(self):
        return F.softplus(self.raw_lengthscale)

    @property
    def outputscale(self):
        return F.softplus(self.raw_outputscale)

    @property
    def noise(self):
        return F.softplus(self.raw_noise) + 1e-4

    def kernel(self, x1, x2):
        dist = torch.cdist(x1 / self.lengthscale, x2 / self.lengthscale).pow(2)
        return self.outputscale * torch.exp(-0.5 * dist)

    def neg_mll(self, x, y):
        n = x.shape[0]
        K = self.kernel(x, x) + self.noise * torch.eye(n, dtype=x.dtype)
        L = torch.linalg.cholesky(K + 1e-6 * torch.eye(n, dtype=x.dtype))
        r = (y - self.mean_constant).unsqueeze(-1)
        alpha = torch.cholesky_solve(r, L)
        data_fit = 0.5 * (r * alpha).sum()
        log_det = torch.log(torch.diagonal(L)).sum()
        return (data_fit + log_det + 0.5 * n * math.log(2 * math.pi)) / n

    def predict(self, x, y, x_star):
        n = x.shape[0]
        K = self.kernel(x, x) + (self.noise + 1e-6) * torch.eye(n, dtype=x.dtype)
        L = torch.linalg.cholesky(K)
        k_star = self.kernel(x, x_star)
        v = torch.linalg.solve_triangular(L, k_star, upper=False)
        r = (y - self.mean_constant).unsqueeze(-1)
        w = torch.linalg.solve_triangular(L, r, upper=False)
        mean = self.mean_constant + (v.T @ w).squeeze(-1)
        var = self.outputscale - (v * v).sum(0) + self.noise
        return mean, var, torch.logdet(K)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(17)
    x = torch.from_numpy(np.sort(rng.uniform(-3, 3, (40, 1)), axis=0))
    y = torch.sin(2 * x[:, 0]) + 0.3 * x[:, 0] + 0.1 * torch.from_numpy(rng.standard_normal(40))
    x_star = torch.linspace(-3.5, 3.5, 11, dtype=torch.float64).unsqueeze(-1)

    gp = ExactGP()
    if initial_state is not None:
        gp.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in gp.state_dict().items()}
    optimizer = torch.optim.Adam(gp.parameters(), lr=0.1)

    def train_step(x, y):
        optimizer.zero_grad()
        loss = gp.neg_mll(x, y)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for i in range(30):
        losses.append(train_step(x, y).item())

    with torch.no_grad():
        mean, var, logdet = gp.predict(x, y, x_star)
        L = torch.linalg.cholesky(gp.kernel(x, x) + (gp.noise + 1e-6) * torch.eye(40,
                                                                                  dtype=x.dtype))
        logdet_chol = 2 * torch.log(torch.diagonal(L)).sum()
    values = {"mean": mean, "var": var, "logdet": logdet, "logdet_chol": logdet_chol,
              "hypers": torch.stack([gp.lengthscale, gp.outputscale, gp.noise]).detach()}
    return {"losses": losses, "values": values, "initial_state": initial}
