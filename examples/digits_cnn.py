"""Train a small CNN on scikit-learn's 8x8 handwritten digits and report held-out metrics."""

import os
import sys
import tempfile
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import kiln as torch
import kiln.nn as nn
from kiln.metrics import accuracy, f1_score, precision, recall
from kiln.utils.data import DataLoader, TensorDataset

SEED = 0
# KILN_EXAMPLE_QUICK=1 (set by the tests) trains for fewer epochs; the thresholds still hold.
EPOCHS = 6 if os.environ.get("KILN_EXAMPLE_QUICK") else 10
# `python digits_cnn.py --compile` (or KILN_EXAMPLE_COMPILE=1) compiles the training step.
COMPILE = "--compile" in sys.argv or bool(os.environ.get("KILN_EXAMPLE_COMPILE"))


class DigitsCNN(nn.Module):
    """Two conv blocks (8x8 -> 4x4 -> 2x2) and a two-layer classifier head."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_data():
    """Digits as (N, 1, 8, 8) float32 images scaled to [0, 1], split 75/25, stratified."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, random_state=SEED, stratify=digits.target)
    return (torch.tensor(x_train), torch.tensor(y_train, dtype=torch.int64),
            torch.tensor(x_test), torch.tensor(y_test, dtype=torch.int64))


def evaluate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x).argmax(dim=1)


def print_metrics(title: str, y_true, y_pred, average: str) -> dict:
    scores = {
        "accuracy": accuracy(y_true, y_pred),
        "precision": precision(y_true, y_pred, average=average),
        "recall": recall(y_true, y_pred, average=average),
        "f1": f1_score(y_true, y_pred, average=average),
    }
    print(f"\n{title} ({average} averages for precision/recall/F1)")
    print(f"{'metric':<10} {'value':>7}")
    for name, value in scores.items():
        print(f"{name:<10} {value:>7.4f}")
    return scores


def main() -> None:
    start = time.perf_counter()
    torch.manual_seed(SEED)
    # kiln's matmuls are small; one BLAS thread beats several contending for 2 cores
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = load_data()
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))

    model = DigitsCNN()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)

    def train_step(images, labels):
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    if COMPILE:
        train_step = torch.compile(train_step)
        print("training step compiled with kiln.compile")

    for epoch in range(EPOCHS):
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1:2d}/{EPOCHS}", leave=False)
        for images, labels in bar:
            loss = train_step(images, labels)
            total += loss.item() * len(labels)
            seen += len(labels)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        scheduler.step()
        held_out = (evaluate(model, x_test) == y_test).float().mean().item()
        print(f"epoch {epoch + 1:2d}  train loss {total / seen:.4f}  held-out acc {held_out:.4f}")

    # Round-trip the weights through a file and evaluate the reloaded model, as a user would.
    if hasattr(torch, "save") and hasattr(torch, "load"):
        path = os.path.join(tempfile.mkdtemp(), "digits_cnn.pt")
        torch.save(model.state_dict(), path)
        model = DigitsCNN()
        model.load_state_dict(torch.load(path))
        print(f"saved and reloaded the weights from {path}")

    predictions = evaluate(model, x_test)
    print_metrics(f"held-out metrics, {len(y_test)} digits", y_test, predictions, "macro")
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
