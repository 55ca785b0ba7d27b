"""A WaveNet as the audio community writes it (r9y9/wavenet_vocoder, vincentherrmann's
pytorch-wavenet): waveforms mu-law companded (`torch.sign`, `torch.log1p`, `torch.abs`) and
quantised to 256 classes, one-hot inputs into a causal Conv1d, a stack of dilated causal
convolutions padded on the left by `F.pad`, gated `tanh * sigmoid` units, residual and skip
1x1 convolutions summed across layers, a 256-way cross-entropy over the next sample, and a
short generation drawing each sample from `torch.distributions.Categorical` at a falling
temperature, mu-law expanded back to a waveform. The training step and the sampling step are the
compiled functions."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical


def mu_law_encode(audio, quantization_channels=256):
    mu = quantization_channels - 1
    safe = torch.clamp(audio, -1.0, 1.0)
    magnitude = torch.log1p(mu * torch.abs(safe)) / math.log1p(mu)
    signal = torch.sign(safe) * magnitude
    return ((signal + 1) / 2 * mu + 0.5).long()


def mu_law_decode(output, quantization_channels=256):
    mu = quantization_channels - 1
    signal = 2 * (output.float() / mu) - 1
    magnitude = (1 / mu) * ((1 + mu) ** torch.abs(signal) - 1)
    return torch.sign(signal) * magnitude


class CausalConv1d(nn.Conv1d):
    def __init__(self, in_channels, out_channels, kernel_size, dilation=1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x):
        return super().forward(F.pad(x, (self.left_pad, 0)))


class ResidualLayer(nn.Module):
    def __init__(self, residual_channels, gate_channels, skip_channels, dilation):
        super().__init__()
        self.conv = CausalConv1d(residual_channels, gate_channels, 2, dilation=dilation)
        self.res = nn.Conv1d(gate_channels // 2, residual_channels, 1)
        self.skip = nn.Conv1d(gate_channels // 2, skip_channels, 1)

    def forward(self, x):
        h = self.conv(x)
        a, b = h.split(h.size(1) // 2, dim=1)
        z = torch.tanh(a) * torch.sigmoid(b)
        s = self.skip(z)
        x = (x + self.res(z)) * math.sqrt(0.5)
        return x, s


class WaveNet(nn.Module):
    def __init__(self, classes=256, residual_channels=16, gate_channels=32, skip_channels=16,
                 dilations=(1, 2, 4, 8, 1, 2, 4, 8)):
        super().__init__()
        self.classes = classes
        self.first = CausalConv1d(classes, residual_channels, 2)
        self.layers = nn.ModuleList(ResidualLayer(residual_channels, gate_channels,
                                                  skip_channels, d) for d in dilations)
        self.last = nn.Sequential(nn.ReLU(inplace=True), nn.Conv1d(skip_channels, skip_channels, 1),
                                  nn.ReLU(inplace=True), nn.Conv1d(skip_channels, classes, 1))
        self.receptive_field = 2 + sum(dilations)

    def forward(self, x):
        x = self.first(x)
        skips = 0
        for layer in self.layers:
            x, s = layer(x)
            skips = skips + s
        return self.last(skips * math.sqrt(1.0 / len(self.layers)))


def make_waves(rng, n, length):
    t = np.arange(length) / 800.0
    freqs = rng.uniform(40, 120, (n, 1))
    phases = rng.uniform(0, 2 * np.pi, (n, 1))
    waves = 0.6 * np.sin(2 * np.pi * freqs * t + phases) + 0.05 * rng.standard_normal((n, length))
    return torch.from_numpy(waves.astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(11)
    audio = make_waves(rng, 16, 97)
    codes = mu_law_encode(audio)
    model = WaveNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def train_step(codes):
        inputs = F.one_hot(codes[:, :-1], 256).float().transpose(1, 2)
        targets = codes[:, 1:]
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for batch in codes.split(4):
            losses.append(train_step(batch).item())

    model.eval()

    @torch.no_grad()
    def next_sample(window, temperature):
        logits = model(F.one_hot(window, 256).float().transpose(1, 2))[:, :, -1]
        return Categorical(logits=logits / temperature).sample()

    if compile:
        next_sample = torch.compile(next_sample)
    torch.manual_seed(seed + 1)
    generated = codes[:2, :model.receptive_field].clone()
    for step in range(6):
        window = generated[:, -model.receptive_field:]
        sample = next_sample(window, 1.0 - 0.1 * step)
        generated = torch.cat([generated, sample.unsqueeze(1)], dim=1)
    wave = mu_law_decode(generated)
    roundtrip = (mu_law_decode(codes) - audio.clamp(-1, 1)).abs().max()
    values = {"codes": codes[:2, :12], "generated": generated[:, -6:], "wave": wave[:, -6:],
              "roundtrip": roundtrip, "receptive_field": model.receptive_field}
    return {"losses": losses, "values": values, "initial_state": initial}
