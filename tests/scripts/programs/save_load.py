"""Optimization and save/load tutorials: hyperparameters, train_loop/test_loop functions, then
torch.save of the model's and optimizer's state_dicts, a fresh model and optimizer restored
with torch.load(weights_only=True), and training resumed."""
import os
import tempfile

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 5))

    def forward(self, x):
        return self.linear_relu_stack(self.flatten(x))


def train_loop(dataloader, model, loss_fn, optimizer, losses):
    model.train()
    for batch, (X, y) in enumerate(dataloader):
        pred = model(X)
        loss = loss_fn(pred, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())


def test_loop(dataloader, model, loss_fn):
    model.eval()
    num_batches = len(dataloader)
    test_loss, correct = 0, 0
    with torch.no_grad():
        for X, y in dataloader:
            pred = model(X)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).type(torch.float).sum().item()
    return test_loss / num_batches, correct / len(dataloader.dataset)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(4).normal(size=(5, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 5, 160)
    x = (centers[y] + rng.normal(size=(160, 1, 6, 6))).astype(np.float32)
    train = DataLoader(TensorDataset(torch.from_numpy(x[:128]), torch.from_numpy(y[:128])),
                       batch_size=32)
    test = DataLoader(TensorDataset(torch.from_numpy(x[128:]), torch.from_numpy(y[128:])),
                      batch_size=32)
    learning_rate, epochs = 1e-2, 2
    model = NeuralNetwork()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    losses = []
    for t in range(epochs):
        train_loop(train, model, loss_fn, optimizer, losses)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "checkpoint.pth")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": epochs}, path)
        restored = NeuralNetwork()
        restored_opt = torch.optim.Adam(restored.parameters(), lr=learning_rate)
        checkpoint = torch.load(path, weights_only=True)
        restored.load_state_dict(checkpoint["model"])
        restored_opt.load_state_dict(checkpoint["optimizer"])
        start = checkpoint["epoch"]
    before = test_loop(test, model, loss_fn)
    after_load = test_loop(test, restored, loss_fn)
    for t in range(start, start + 2):
        train_loop(train, restored, loss_fn, restored_opt, losses)
    final = test_loop(test, restored, loss_fn)
    return {"losses": losses, "before": before, "after_load": after_load, "final": final,
            "initial_state": initial}


if __name__ == "__main__":
    print(main())
