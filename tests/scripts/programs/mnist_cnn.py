"""MNIST-style CNN (pytorch/examples mnist/main.py), on synthetic 12x12 digits."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(256, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def synthetic_digits(n, rng):
    templates = np.random.default_rng(1234).normal(size=(10, 1, 12, 12)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    images = templates[labels] + 0.8 * rng.normal(size=(n, 1, 12, 12)).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels)


def train(model, device, train_loader, optimizer, epoch, step_fn, losses):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        loss = step_fn(data, target)
        losses.append(loss.item())


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    return test_loss, correct / len(test_loader.dataset)


def main(seed=0, compile=False, initial_state=None, epochs=2):
    torch.manual_seed(seed)
    device = torch.device("cpu")
    rng = np.random.default_rng(seed)
    train_loader = DataLoader(TensorDataset(*synthetic_digits(128, rng)), batch_size=32,
                              shuffle=True)
    test_loader = DataLoader(TensorDataset(*synthetic_digits(64, rng)), batch_size=64)
    model = Net().to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)

    def train_step(data, target):
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    losses = []
    for epoch in range(1, epochs + 1):
        train(model, device, train_loader, optimizer, epoch, train_step, losses)
        test_loss, accuracy = test(model, device, test_loader)
        scheduler.step()
    return {"losses": losses, "test_loss": test_loss, "accuracy": accuracy,
            "initial_state": initial, "lr": scheduler.get_last_lr()}


if __name__ == "__main__":
    print(main())
