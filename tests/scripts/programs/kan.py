"""Kolmogorov-Arnold network layers as efficient-kan / pykan-style code writes them: a grid of
knots held in a registered buffer (`torch.arange(-k, grid_size + k + 1) * h + grid_range[0]`,
`expand(in_features, -1).contiguous()`), B-spline bases by the Cox-de Boor recursion (the
order-0 indicator `(x >= grid[:, :-1]) & (x < grid[:, 1:])` cast to the input dtype, then k
rounds of the two-term recursion on slices of the grid), `torch.einsum` of the bases with the
spline coefficients (scaled by a standalone scaler), a SiLU base branch through `F.linear`,
and pykan's regulariser: the L1 norm of each edge's mean absolute activation plus the entropy
of their distribution, added to an MSE loss. A symbolic-regression target; the train step is
compiled."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class KANLinear(nn.Module):
    def __init__(self, in_features, out_features, grid_size=5, spline_order=3,
                 scale_noise=0.1, scale_base=1.0, scale_spline=1.0, grid_range=(-1, 1)):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        h = (grid_range[1] - grid_range[0]) / grid_size
        grid = ((torch.arange(-spline_order, grid_size + spline_order + 1) * h
                 + grid_range[0]).expand(in_features, -1).contiguous())
        self.register_buffer("grid", grid)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(
            torch.empty(out_features, in_features, grid_size + spline_order))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.scale_noise, self.scale_base, self.scale_spline = scale_noise, scale_base, \
            scale_spline
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5) * self.scale_base)
        with torch.no_grad():
            noise = ((torch.rand(self.out_features, self.in_features,
                                 self.grid_size + self.spline_order) - 0.5)
                     * self.scale_noise / self.grid_size)
            self.spline_weight.data.copy_(noise)
            nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * self.scale_spline)

    def b_splines(self, x):
        """The B-spline bases of x: (batch, in_features, grid_size + spline_order)."""
        assert x.dim() == 2 and x.size(1) == self.in_features
        grid = self.grid
        x = x.unsqueeze(-1)
        bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
        for k in range(1, self.spline_order + 1):
            bases = (
                (x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)]) * bases[:, :, :-1]
            ) + (
                (grid[:, k + 1:] - x) / (grid[:, k + 1:] - grid[:, 1:(-k)]) * bases[:, :, 1:]
            )
        assert bases.size() == (x.size(0), self.in_features, self.grid_size + self.spline_order)
        return bases.contiguous()

    @property
    def scaled_spline_weight(self):
        return self.spline_weight * self.spline_scaler.unsqueeze(-1)

    def forward(self, x):
        base_output = F.linear(F.silu(x), self.base_weight)
        bases = self.b_splines(x)
        # each edge's activation phi_{o,i}(x_i), kept for the regulariser
        self.activations = torch.einsum("bik,oik->boi", bases, self.scaled_spline_weight) \
            + F.silu(x).unsqueeze(1) * self.base_weight
        spline_output = torch.einsum("bik,oik->bo", bases, self.scaled_spline_weight)
        return base_output + spline_output

    def regularization_loss(self, regularize_activation=1.0, regularize_entropy=1.0):
        l1_fake = self.activations.abs().mean(0)          # (out, in): mean |phi| per edge
        regularization_loss_activation = l1_fake.sum()
        p = l1_fake / regularization_loss_activation
        regularization_loss_entropy = -torch.sum(p * p.log())
        return (regularize_activation * regularization_loss_activation
                + regularize_entropy * regularization_loss_entropy)


class KAN(nn.Module):
    def __init__(self, widths, **kw):
        super().__init__()
        self.layers = nn.ModuleList(KANLinear(a, b, **kw) for a, b in zip(widths, widths[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def regularization_loss(self, a=1.0, e=1.0):
        return sum(layer.regularization_loss(a, e) for layer in self.layers)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.uniform(-0.95, 0.95, (128, 2)).astype(np.float32))
    y = torch.exp(torch.sin(math.pi * x[:, :1]) + x[:, 1:] ** 2)       # pykan's example

    model = KAN([2, 5, 1], grid_size=5, spline_order=3)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    lamb = 1e-3

    def train_step(xb, yb):
        pred = model(xb)
        mse = F.mse_loss(pred, yb)
        loss = mse + lamb * model.regularization_loss(1.0, 2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss, mse.detach()

    if compile:
        train_step = torch.compile(train_step)
    losses, mses = [], []
    for epoch in range(5):
        for xb, yb in zip(x.split(32), y.split(32)):
            loss, mse = train_step(xb, yb)
            losses.append(loss.item())
            mses.append(mse.item())

    layer = model.layers[0]
    probe = torch.linspace(-0.99, 0.99, 7).unsqueeze(1).expand(-1, 2).contiguous()
    with torch.no_grad():
        bases = layer.b_splines(probe)
        out = model(probe)
    values = {"mse": torch.tensor(mses), "bases": bases,
              "partition_of_unity": bool(torch.allclose(bases.sum(-1), torch.ones(7, 2),
                                                        atol=1e-5)),
              "grid": layer.grid.clone(), "out": out,
              "reg": model.regularization_loss(1.0, 2.0).detach()}
    return {"losses": losses, "values": values, "initial_state": initial}
