"""An audio classifier on log-mel spectrograms as speech-commands and PANNs-style code writes
it: the front end a module (`torch.stft` with a `torch.hann_window` buffer and
`return_complex=True`, the power spectrum by `.abs().pow(2)`, a triangular mel filterbank built
by hand as a matrix and registered as a buffer, `torch.log(x + 1e-6)`), SpecAugment in training
(time and frequency masks over random spans per example, drawn by `torch.rand` and applied by
`masked_fill`), and a small Conv2d/BatchNorm2d CNN with global average pooling; AdamW with a
StepLR, accuracy on a held-out set. The features are computed on the fly, outside the compiled
training step (which holds SpecAugment and the CNN); `frontend_compiled` compiles the front end
alone, whose complex spectrum kiln's compiled code does not hold."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(n_freqs, n_mels, sample_rate, f_min=0.0, f_max=None):
    f_max = f_max or sample_rate / 2
    # in float64, as librosa does: a frequency bin near a triangle's edge gets a weight that
    # float32 rounding of the edge would change by orders of magnitude
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    m_pts = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)          # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.min(down, up), min=0.0).float()       # (n_freqs, n_mels)


class LogMelSpectrogram(nn.Module):
    def __init__(self, sample_rate=8000, n_fft=256, hop_length=64, n_mels=32):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft))
        self.register_buffer("fbank", mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate))

    def forward(self, wav):
        spec = torch.stft(wav, self.n_fft, hop_length=self.hop_length, window=self.window,
                          center=True, return_complex=True)
        power = spec.abs().pow(2)                                   # (B, freq, time)
        mel = torch.matmul(power.transpose(1, 2), self.fbank).transpose(1, 2)
        return torch.log(mel + 1e-6)


def mask_along_axis(spec, max_width, axis):
    """One random span per example along `axis` (1: mel bins, 2: frames) set to zero."""
    batch, size = spec.size(0), spec.size(axis)
    width = torch.rand(batch, device=spec.device) * max_width
    start = torch.rand(batch, device=spec.device) * (size - width)
    start, end = start.long(), (start + width).long()
    positions = torch.arange(size, device=spec.device)
    mask = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
    mask = mask[:, :, None] if axis == 1 else mask[:, None, :]
    return spec.masked_fill(mask, 0.0)


class AudioCNN(nn.Module):
    def __init__(self, n_classes=4):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1)

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(1, 8), block(8, 16), block(16, 16))
        self.classifier = nn.Linear(16, n_classes)

    def forward(self, x, spec_augment=False):
        if spec_augment:
            x = mask_along_axis(x, 6, axis=1)
            x = mask_along_axis(x, 8, axis=2)
        x = self.input_norm(x.unsqueeze(1))
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def make_clips(rng, n, length=2048, sample_rate=8000):
    labels = rng.integers(0, 4, n)
    t = np.arange(length) / sample_rate
    base = np.array([300.0, 700.0, 1300.0, 2200.0])[labels][:, None]
    chirp = base * (1 + 0.3 * t[None, :] * rng.uniform(-1, 1, (n, 1)))
    clips = np.sin(2 * np.pi * chirp * t) * rng.uniform(0.3, 1.0, (n, 1))
    clips = clips + 0.1 * rng.standard_normal((n, length))
    return torch.from_numpy(clips.astype(np.float32)), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(5)
    train_x, train_y = make_clips(rng, 48)
    test_x, test_y = make_clips(rng, 16)
    frontend = LogMelSpectrogram()
    model = AudioCNN()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    def train_step(features, labels):
        logits = model(features, spec_augment=True)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, lrs = [], []
    for epoch in range(4):
        model.train()
        for wav, labels in zip(train_x.split(12), train_y.split(12)):
            with torch.no_grad():
                features = frontend(wav)
            losses.append(train_step(features, labels).item())
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])

    model.eval()
    with torch.no_grad():
        features = frontend(test_x)
        logits = model(features)
        accuracy = (logits.argmax(1) == test_y).float().mean()
    spectrum = torch.compile(frontend) if compile else frontend
    with torch.no_grad():
        frontend_compiled = spectrum(test_x[:2])
    values = {"frontend_compiled": frontend_compiled, "accuracy": accuracy,
              "test_logits": logits[:4], "features": features[:2, :4, :6],
              "fbank_sum": frontend.fbank.sum(0), "lrs": ",".join(f"{lr:.6g}" for lr in lrs),
              "running_var": model.input_norm.running_var}
    return {"losses": losses, "values": values, "initial_state": initial}
