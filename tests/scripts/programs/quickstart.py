"""Quickstart tutorial: FashionMNIST-like MLP with DataLoader, train/test loops, SGD."""
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class FakeFashion(Dataset):
    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 10, n)
        centers = np.random.default_rng(99).normal(size=(10, 1, 8, 8)).astype(np.float32)
        self.images = centers[self.labels] + rng.normal(size=(n, 1, 8, 8)).astype(np.float32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return torch.tensor(self.images[idx]), int(self.labels[idx])


class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(8 * 8, 32),
            nn.ReLU(),
            nn.Linear(32, 32),
            nn.ReLU(),
            nn.Linear(32, 10)
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def main(seed=0, compile=False, initial_state=None, epochs=3):
    torch.manual_seed(seed)
    device = torch.accelerator.current_accelerator().type \
        if torch.accelerator.is_available() else "cpu"
    training_data = FakeFashion(256, seed)
    test_data = FakeFashion(64, seed + 100)
    batch_size = 64
    train_dataloader = DataLoader(training_data, batch_size=batch_size)
    test_dataloader = DataLoader(test_data, batch_size=batch_size)
    model = NeuralNetwork().to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-1)

    def train_step(X, y):
        pred = model(X)
        loss = loss_fn(pred, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []

    def train(dataloader, model, loss_fn, optimizer):
        model.train()
        for batch, (X, y) in enumerate(dataloader):
            X, y = X.to(device), y.to(device)
            losses.append(train_step(X, y).item())

    def test(dataloader, model, loss_fn):
        size = len(dataloader.dataset)
        num_batches = len(dataloader)
        model.eval()
        test_loss, correct = 0, 0
        with torch.no_grad():
            for X, y in dataloader:
                X, y = X.to(device), y.to(device)
                pred = model(X)
                test_loss += loss_fn(pred, y).item()
                correct += (pred.argmax(1) == y).type(torch.float).sum().item()
        test_loss /= num_batches
        correct /= size
        return test_loss, correct

    for t in range(epochs):
        train(train_dataloader, model, loss_fn, optimizer)
        test_loss, accuracy = test(test_dataloader, model, loss_fn)
    return {"losses": losses, "test_loss": test_loss, "accuracy": accuracy,
            "initial_state": initial}


if __name__ == "__main__":
    print(main())
