"""The models the export, ONNX and C-library tests deploy, with example inputs.

Each builder returns (model in eval mode, example input at batch 3, a function making an input
at any batch). Batch-norm running statistics are set to non-trivial values so eval mode is
actually exercised.
"""

from __future__ import annotations

import numpy as np

import kiln
import kiln.nn as nn


class DigitsCNN(nn.Module):
    """The architecture of examples/digits_cnn.py: two conv blocks and a two-layer head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 2 * 2, 64), nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class ConvNet(nn.Module):
    """Conv, batch norm, max and average pooling, dropout, on 3-channel 12x12 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 12, kernel_size=3, stride=2)
        self.bn2 = nn.BatchNorm2d(12)
        self.avg = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.pool(kiln.relu(self.bn1(self.conv1(x))))
        x = self.avg(kiln.relu(self.bn2(self.conv2(x))))
        return self.fc(self.drop(x.view(x.shape[0], -1)))


class CharLSTM(nn.Module):
    """Embedding, a one-layer LSTM, and a linear layer on the last step's output."""

    def __init__(self, vocab: int = 20) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, vocab)

    def forward(self, x):
        out, _ = self.lstm(self.embed(x))
        return self.fc(out[:, -1])


def _randomize_batch_norm(model: nn.Module, rng) -> None:
    with kiln.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(kiln.tensor(rng.normal(0, 0.3, c).astype(np.float32)))
                m.running_var.copy_(kiln.tensor(rng.uniform(0.5, 2, c).astype(np.float32)))
                m.weight.copy_(kiln.tensor(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                m.bias.copy_(kiln.tensor(rng.normal(0, 0.2, c).astype(np.float32)))


def build(name: str):
    """(model in eval mode, input maker `make(batch, seed)`) for one of MODELS."""
    kiln.manual_seed(0)
    rng = np.random.default_rng(0)
    if name == "digits_cnn":
        model = DigitsCNN()

        def make(b, seed=0):
            return kiln.tensor(np.random.default_rng(seed).random((b, 1, 8, 8), np.float32))
    elif name == "convnet":
        model = ConvNet()

        def make(b, seed=0):
            return kiln.tensor(np.random.default_rng(seed).standard_normal(
                (b, 3, 12, 12)).astype(np.float32))
    elif name == "mlp":
        model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2))

        def make(b, seed=0):
            return kiln.tensor(np.random.default_rng(seed).standard_normal(
                (b, 30)).astype(np.float32))
    elif name == "char_lstm":
        model = CharLSTM()

        def make(b, seed=0):
            return kiln.tensor(np.random.default_rng(seed).integers(0, 20, (b, 6)))
    elif name == "transformer":
        layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32,
                                           dropout=0.1, batch_first=True)
        model = nn.TransformerEncoder(layer, num_layers=2)

        def make(b, seed=0):
            return kiln.tensor(np.random.default_rng(seed).standard_normal(
                (b, 5, 16)).astype(np.float32))
    else:
        raise KeyError(name)
    _randomize_batch_norm(model, rng)
    model.eval()
    return model, make


MODELS = ("digits_cnn", "mlp", "char_lstm", "transformer", "convnet")


def eager(model, x) -> np.ndarray:
    with kiln.no_grad():
        return model(x).numpy()
