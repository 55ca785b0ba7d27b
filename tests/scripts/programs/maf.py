"""A masked autoregressive flow as the normalizing-flow tutorials (Papamakarios et al.'s MAF,
Karpathy's pytorch-made, the nflows-style reimplementations) write it in plain PyTorch: MADE
blocks of `MaskedLinear`, an `nn.Linear` subclass whose `mask` buffer multiplies the weight in
`forward`, with the input degrees drawn by a seeded `torch.randperm` and the hidden degrees by
`torch.randint`; each MADE gives a shift and a log-scale, the affine transform adds its log-det,
the order is reversed between layers by `x.flip(-1)`, and a `torch.distributions.Normal` base
gives the log-likelihood; trained by Adam on two moons lifted to 3-D. Sampling inverts the flow
one dimension at a time in a Python loop. The training step is the compiled function."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Normal


class MaskedLinear(nn.Linear):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", torch.ones(out_features, in_features))

    def set_mask(self, mask):
        self.mask.data.copy_(mask.float())

    def forward(self, x):
        return F.linear(x, self.mask * self.weight, self.bias)


class MADE(nn.Module):
    """An autoregressive net: output d (shift and log-scale) sees only inputs before d."""

    def __init__(self, dim, hidden, generator):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(MaskedLinear(dim, hidden), nn.ReLU(),
                                 MaskedLinear(hidden, hidden), nn.ReLU(),
                                 MaskedLinear(hidden, 2 * dim))
        degrees = [torch.randperm(dim, generator=generator)]
        for _ in range(2):
            low = int(degrees[-1].min())
            degrees.append(torch.randint(low, dim - 1, (hidden,), generator=generator))
        layers = [m for m in self.net if isinstance(m, MaskedLinear)]
        for layer, d_in, d_out in zip(layers[:-1], degrees[:-1], degrees[1:]):
            layer.set_mask(d_out[:, None] >= d_in[None, :])
        last = degrees[0].repeat(2)[:, None] > degrees[-1][None, :]
        layers[-1].set_mask(last)
        self.register_buffer("order", degrees[0])

    def forward(self, x):
        shift, log_scale = self.net(x).chunk(2, dim=-1)
        return shift, torch.tanh(log_scale)


class MAF(nn.Module):
    def __init__(self, dim=3, hidden=24, n_layers=3, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList([MADE(dim, hidden, generator) for _ in range(n_layers)])
        self.base = Normal(torch.zeros(dim), torch.ones(dim))

    def forward(self, x):
        """z and log|det dz/dx|: u = (x - shift) * exp(-log_scale), then reverse the order."""
        log_det = torch.zeros(x.shape[0])
        for made in self.layers:
            shift, log_scale = made(x)
            x = (x - shift) * torch.exp(-log_scale)
            log_det = log_det - log_scale.sum(dim=-1)
            x = x.flip(-1)
        return x, log_det

    def log_prob(self, x):
        z, log_det = self(x)
        return self.base.log_prob(z).sum(dim=-1) + log_det

    @torch.no_grad()
    def sample(self, n):
        z = self.base.sample((n,))
        for made in reversed(self.layers):
            z = z.flip(-1)
            x = torch.zeros_like(z)
            # x[d] needs the shift and scale computed from x before d: one pass per dimension,
            # in the MADE's order
            for d in made.order.argsort().tolist():
                shift, log_scale = made(x)
                x[:, d] = z[:, d] * torch.exp(log_scale[:, d]) + shift[:, d]
            z = x
        return z


def two_moons(n, generator):
    t = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    # a third coordinate that depends on the first two, so the order matters
    z = torch.sin(2 * x) * y
    data = torch.stack([x, y, z], dim=1) + 0.05 * torch.randn(n, 3, generator=generator)
    return (data - torch.tensor([0.5, 0.25, 0.0])) * 2


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    data = two_moons(256, torch.Generator().manual_seed(1))
    model = MAF(seed=seed)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def train_step(batch):
        loss = -model.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for batch in data.split(64):
            losses.append(train_step(batch).item())

    # the autoregressive property: output d's gradient is zero on inputs of degree >= its own
    made = model.layers[0]
    x = data[:4].clone().requires_grad_(True)
    shift, log_scale = made(x)
    leak = torch.zeros(())
    for d in range(x.shape[1]):
        grad = torch.autograd.grad(shift[:, d].sum() + log_scale[:, d].sum(), x,
                                   retain_graph=True)[0]
        later = made.order >= made.order[d]
        leak = leak + (grad.abs() * later).sum()
    seen = torch.autograd.grad(shift.sum(), x)[0].abs().sum()
    with torch.no_grad():
        z, log_det = model(data[:8])
        test_nll = -model.log_prob(data).mean()
    torch.manual_seed(5)
    samples = model.sample(6)
    with torch.no_grad():
        back, _ = model(samples)
    torch.manual_seed(5)
    z_drawn = model.base.sample((6,))
    values = {"z": z, "log_det": log_det, "test_nll": test_nll, "samples": samples,
              "inverse_err": (back - z_drawn).abs().max(), "leak": leak, "seen": seen,
              "masks": torch.cat([m.mask.flatten() for m in model.modules()
                                  if isinstance(m, MaskedLinear)]),
              "orders": torch.stack([m.order for m in model.layers])}
    return {"losses": losses, "values": values, "initial_state": initial}
