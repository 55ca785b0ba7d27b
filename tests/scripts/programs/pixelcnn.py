"""PixelCNN as the tutorials and paper reimplementations write it: a `MaskedConv2d` subclass of
`nn.Conv2d` whose mask is a registered buffer built by slicing (type A hides the centre pixel,
type B shows it) and whose forward multiplies `self.weight.data` by it before calling
`super().forward`; residual blocks of 1x1 and masked 3x3 convolutions with BatchNorm; 256-way
logits per pixel and `F.cross_entropy` on the quantised pixels (long targets of shape
(N, H, W) against (N, 256, H, W) logits); bits per dimension logged; then sampling: a zero
image filled pixel by pixel under `no_grad`, each pixel drawn by `torch.multinomial` from the
softmax of its logits and written in place."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MaskedConv2d(nn.Conv2d):
    def __init__(self, mask_type, *args, **kwargs):
        super().__init__(*args, **kwargs)
        assert mask_type in {"A", "B"}
        self.register_buffer("mask", self.weight.data.clone())
        _, _, kH, kW = self.weight.size()
        self.mask.fill_(1)
        self.mask[:, :, kH // 2, kW // 2 + (mask_type == "B"):] = 0
        self.mask[:, :, kH // 2 + 1:] = 0

    def forward(self, x):
        self.weight.data *= self.mask
        return super(MaskedConv2d, self).forward(x)


class GatedMaskedConv(nn.Module):
    """The same masking written the other way: the mask applied in forward, not to .data."""

    def __init__(self, channels, k=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, k, padding=k // 2)
        mask = torch.ones_like(self.conv.weight)
        mask[:, :, k // 2, k // 2 + 1:] = 0
        mask[:, :, k // 2 + 1:, :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        out = F.conv2d(x, self.conv.weight * self.mask, self.conv.bias, padding=1)
        a, b = out.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)


class ResidualBlock(nn.Module):
    def __init__(self, h):
        super().__init__()
        # no biases before a BatchNorm: their gradient is zero but for rounding, and Adam
        # would step them by the sign of that rounding
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(2 * h, h, 1, bias=False), nn.BatchNorm2d(h),
            nn.ReLU(), MaskedConv2d("B", h, h, 3, padding=1, bias=False), nn.BatchNorm2d(h),
            nn.ReLU(), nn.Conv2d(h, 2 * h, 1, bias=False), nn.BatchNorm2d(2 * h))

    def forward(self, x):
        return x + self.net(x)


class PixelCNN(nn.Module):
    def __init__(self, h=4, n_blocks=2, levels=256):
        super().__init__()
        self.levels = levels
        self.inp = MaskedConv2d("A", 1, 2 * h, 5, padding=2, bias=False)
        self.blocks = nn.Sequential(*[ResidualBlock(h) for _ in range(n_blocks)])
        self.gated = GatedMaskedConv(2 * h)
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * h, 16, 1), nn.ReLU(),
                                 nn.Conv2d(16, levels, 1))

    def forward(self, x):
        return self.out(self.gated(self.blocks(self.inp(x))))


def make_images(rng, n, size=6):
    """Quantised blobs: a bright square on a dark ground, with noise."""
    imgs = np.zeros((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        r, c = rng.integers(0, size - 2, size=2)
        imgs[i, 0, r:r + 3, c:c + 3] = 0.8
    imgs += rng.uniform(0, 0.15, size=imgs.shape).astype(np.float32)
    return torch.from_numpy((imgs * 255).astype(np.int64).clip(0, 255))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(5)
    data = make_images(rng, 32)
    model = PixelCNN()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def train_step(pixels):
        x = pixels.float() / 255.0
        logits = model(x)
        loss = F.cross_entropy(logits, pixels.squeeze(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    model.train()
    losses, bpd = [], []
    for epoch in range(3):
        for batch in data.split(8):
            loss = train_step(batch)
            losses.append(loss.item())
            bpd.append(loss.item() / math.log(2))

    # the masks hold: no output depends on a later pixel (gradient of one output pixel)
    model.eval()
    probe = (data[:1].float() / 255.0).requires_grad_(True)
    model(probe)[0, :, 2, 3].logsumexp(0).backward()
    later = probe.grad[0, 0].flatten()[2 * 6 + 3:]
    earlier = probe.grad[0, 0].flatten()[:2 * 6 + 3]

    torch.manual_seed(seed + 1)
    sample = torch.zeros(2, 1, 6, 6)
    with torch.no_grad():
        for i in range(6):
            for j in range(6):
                logits = model(sample)[:, :, i, j]
                probs = F.softmax(logits, dim=1)
                sample[:, :, i, j] = torch.multinomial(probs, 1).float() / 255.0
    values = {"bpd": torch.tensor(bpd), "mask_A": model.inp.mask[0, 0].clone(),
              "mask_B": model.blocks[0].net[4].mask[0, 0].clone(),
              "masked_weight_zero": bool((model.inp.weight * (1 - model.inp.mask)).abs().sum()
                                         == 0),
              "causal": bool(later.abs().max() == 0) and bool(earlier.abs().max() > 0),
              "grad_earlier": earlier, "sample": sample,
              "running_mean": model.blocks[1].net[2].running_mean.clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
