"""A small Glow as the Glow reimplementations (rosinality/glow-pytorch, y0ast/Glow-PyTorch)
write it: images dequantized with `torch.rand_like` noise, squeezed by `view`/`permute`, flow
steps of ActNorm (data-dependent initialization on the first batch, guarded by a registered
`initialized` buffer read with `.item()` as rosinality's; with `python_flag`, by a Python
attribute `inited` beside the buffer as y0ast's), an invertible 1x1 convolution (its
log-determinant by `torch.linalg.slogdet` in double precision, or the LU parametrization from
`torch.linalg.lu` with `torch.triu`/`torch.tril` masks and `torch.diag_embed`) and an affine
coupling whose last convolution starts at zero; a multi-scale split whose halves are scored
under a learned `torch.distributions.Normal`, the last one under `Normal(0, 1)`; the loss in
bits per dimension; sampling by running the flow backwards (`torch.linalg.inv` of the 1x1
weights). The training step is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Normal


class ActNorm(nn.Module):
    def __init__(self, channels, python_flag=False):
        super().__init__()
        self.python_flag = python_flag
        self.inited = False
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x):
        flat = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1)
        mean = flat.mean(1).view(1, -1, 1, 1)
        std = flat.std(1).view(1, -1, 1, 1)
        self.loc.data.copy_(-mean)
        self.log_scale.data.copy_(torch.log(1 / (std + 1e-6)))
        self.initialized.fill_(1)
        self.inited = True

    def forward(self, x):
        if self.python_flag:
            if not self.inited:
                self.initialize(x)
        elif self.initialized.item() == 0:
            self.initialize(x)
        h, w = x.shape[2:]
        logdet = h * w * self.log_scale.sum()
        return (x + self.loc) * torch.exp(self.log_scale), logdet

    def reverse(self, y):
        return y * torch.exp(-self.log_scale) - self.loc


class InvConv2d(nn.Module):
    """The plain 1x1 convolution: a rotation to start, slogdet for the log-determinant."""

    def __init__(self, channels):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)

    def forward(self, x):
        h, w = x.shape[2:]
        logdet = h * w * torch.linalg.slogdet(self.weight.double())[1].float()
        return F.conv2d(x, self.weight.unsqueeze(2).unsqueeze(3)), logdet

    def reverse(self, y):
        return F.conv2d(y, torch.linalg.inv(self.weight).unsqueeze(2).unsqueeze(3))


class InvConv2dLU(nn.Module):
    """W = P L (U + diag(sign(s) exp(log|s|))): the log-determinant is sum(log|s|)."""

    def __init__(self, channels):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("l_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        self.upper = nn.Parameter(torch.triu(upper, 1))

    def weight(self):
        lower = self.lower * self.l_mask + self.eye
        upper = self.upper * self.l_mask.T + torch.diag_embed(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x):
        h, w = x.shape[2:]
        return F.conv2d(x, self.weight()[:, :, None, None]), h * w * self.log_s.sum()

    def reverse(self, y):
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class ZeroConv2d(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x):
        out = self.conv(F.pad(x, [1, 1, 1, 1], value=1))
        return out * torch.exp(self.scale * 3)


class AffineCoupling(nn.Module):
    def __init__(self, channels, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels // 2, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 ZeroConv2d(hidden, channels))
        self.net[0].weight.data.normal_(0, 0.05)
        self.net[0].bias.data.zero_()

    def forward(self, x):
        x_a, x_b = x.chunk(2, 1)
        log_s, t = self.net(x_a).chunk(2, 1)
        s = torch.sigmoid(log_s + 2)
        y_b = (x_b + t) * s
        logdet = torch.sum(torch.log(s).view(x.shape[0], -1), 1)
        return torch.cat([x_a, y_b], 1), logdet

    def reverse(self, y):
        y_a, y_b = y.chunk(2, 1)
        log_s, t = self.net(y_a).chunk(2, 1)
        s = torch.sigmoid(log_s + 2)
        return torch.cat([y_a, y_b / s - t], 1)


class FlowStep(nn.Module):
    def __init__(self, channels, lu, python_flag):
        super().__init__()
        self.actnorm = ActNorm(channels, python_flag)
        self.invconv = InvConv2dLU(channels) if lu else InvConv2d(channels)
        self.coupling = AffineCoupling(channels)

    def forward(self, x):
        x, logdet = self.actnorm(x)
        x, det1 = self.invconv(x)
        x, det2 = self.coupling(x)
        return x, logdet + det1 + det2

    def reverse(self, y):
        return self.actnorm.reverse(self.invconv.reverse(self.coupling.reverse(y)))


def squeeze(x):
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.contiguous().view(b, c * 4, h // 2, w // 2)


def unsqueeze(x):
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.contiguous().view(b, c // 4, h * 2, w * 2)


class Block(nn.Module):
    def __init__(self, in_channels, n_flow, split, lu, python_flag):
        super().__init__()
        channels = in_channels * 4
        self.flows = nn.ModuleList(FlowStep(channels, lu, python_flag) for _ in range(n_flow))
        self.split = split
        if split:
            self.prior = ZeroConv2d(channels // 2, channels)

    def forward(self, x):
        out = squeeze(x)
        logdet = 0
        for flow in self.flows:
            out, det = flow(out)
            logdet = logdet + det
        if self.split:
            out, z_new = out.chunk(2, 1)
            mean, log_sd = self.prior(out).chunk(2, 1)
            log_p = Normal(mean, torch.exp(log_sd)).log_prob(z_new).view(x.shape[0], -1).sum(1)
        else:
            z_new = out
            log_p = Normal(0, 1).log_prob(z_new).view(x.shape[0], -1).sum(1)
        return out, logdet, log_p, z_new

    def reverse(self, out, z):
        if self.split:
            x = torch.cat([out, z], 1)
        else:
            x = z
        for flow in reversed(self.flows):
            x = flow.reverse(x)
        return unsqueeze(x)


class Glow(nn.Module):
    def __init__(self, in_channels=1, n_flow=2, python_flag=False):
        super().__init__()
        self.blocks = nn.ModuleList([
            Block(in_channels, n_flow, split=True, lu=True, python_flag=python_flag),
            Block(in_channels * 2, n_flow, split=False, lu=False, python_flag=python_flag)])

    def forward(self, x):
        log_p_sum, logdet, zs = 0, 0, []
        out = x
        for block in self.blocks:
            out, det, log_p, z = block(out)
            zs.append(z)
            logdet = logdet + det
            log_p_sum = log_p_sum + log_p
        return log_p_sum, logdet, zs

    def reverse(self, zs):
        x = self.blocks[-1].reverse(None, zs[-1])
        for block, z in zip(reversed(self.blocks[:-1]), reversed(zs[:-1])):
            x = block.reverse(x, z)
        return x


def bits_per_dim(log_p, logdet, n_pixels, n_bins):
    loss = -math.log(n_bins) * n_pixels + logdet + log_p
    return (-loss / (math.log(2) * n_pixels)).mean()


def make_images(rng, n):
    """8x8 blobs: a bright square at a random place on a dim, noisy background."""
    images = 0.1 * rng.random((n, 1, 8, 8))
    for i in range(n):
        r, c = rng.integers(0, 5, 2)
        images[i, 0, r:r + 4, c:c + 4] += 0.7
    return torch.from_numpy(images.astype(np.float32))


def main(seed=0, compile=False, initial_state=None, python_flag=False):
    torch.manual_seed(seed)
    rng = np.random.default_rng(4)
    images = make_images(rng, 64)
    model = Glow(python_flag=python_flag)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    n_bins, n_pixels = 32, 64
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def preprocess(x):
        x = torch.floor(x * n_bins) / n_bins - 0.5
        return x + torch.rand_like(x) / n_bins

    def train_step(x):
        log_p, logdet, _ = model(preprocess(x))
        loss = bits_per_dim(log_p, logdet, n_pixels, n_bins)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    # the first batch initializes every ActNorm from its statistics, with no training step
    with torch.no_grad():
        model(preprocess(images[:32]))
    losses = []
    for epoch in range(3):
        for x in images.split(16):
            losses.append(train_step(x).item())

    with torch.no_grad():
        x = preprocess(images[:4])
        log_p, logdet, zs = model(x)
        roundtrip = model.reverse(zs)
        zs_sample = [0.7 * torch.randn_like(z) for z in zs]
        samples = model.reverse(zs_sample)
        step = model.blocks[0].flows[0].invconv
        w = step.weight()
    values = {"roundtrip_err": (roundtrip - x).abs().max(), "log_p": log_p, "logdet": logdet,
              "samples": samples, "lu_logdet_check": torch.linalg.slogdet(w)[1] - step.log_s.sum(),
              "actnorm_loc": model.blocks[1].flows[1].actnorm.loc.detach().flatten(),
              "initialized": int(model.blocks[0].flows[0].actnorm.initialized.item())}
    return {"losses": losses, "values": values, "initial_state": initial}
