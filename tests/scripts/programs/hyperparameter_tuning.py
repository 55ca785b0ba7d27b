"""The hyperparameter tuning tutorial's training function without Ray: a CIFAR-style CNN whose
hidden sizes (l1, l2), learning rate and batch size come from a config, the training set cut
by random_split into train and validation subsets, an SGD training loop with a running loss,
validation loss and accuracy under no_grad each epoch, a checkpoint of the epoch, model and
optimizer state pickled to a temporary directory and restored, and test-set accuracy."""
import os
import pickle
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset, random_split


class Net(nn.Module):
    def __init__(self, l1=120, l2=84):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 2 * 2, l1)
        self.fc2 = nn.Linear(l1, l2)
        self.fc3 = nn.Linear(l2, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def load_data():
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(4, 3, 14, 14)).astype(np.float32)
    y = rng.integers(0, 4, 128)
    x = (centers[y] + 0.3 * rng.normal(size=(128, 3, 14, 14))).astype(np.float32)
    trainset = TensorDataset(torch.from_numpy(x[:96]), torch.from_numpy(y[:96]))
    testset = TensorDataset(torch.from_numpy(x[96:128]), torch.from_numpy(y[96:128]))
    return trainset, testset


def train_cifar(config, net, losses, compile=False):
    device = "cpu"
    net.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=config["lr"], momentum=0.9)
    trainset, _ = load_data()
    test_abs = int(len(trainset) * 0.8)
    train_subset, val_subset = random_split(trainset, [test_abs, len(trainset) - test_abs])
    trainloader = DataLoader(train_subset, batch_size=int(config["batch_size"]), shuffle=True)
    valloader = DataLoader(val_subset, batch_size=int(config["batch_size"]), shuffle=True)

    def train_step(inputs, labels):
        optimizer.zero_grad()
        loss = criterion(net(inputs), labels)
        loss.backward()
        optimizer.step()
        return loss

    step = torch.compile(train_step) if compile else train_step
    reports = []
    for epoch in range(3):
        running_loss, epoch_steps = 0.0, 0
        for i, (inputs, labels) in enumerate(trainloader, 0):
            loss = step(inputs.to(device), labels.to(device))
            losses.append(loss.item())
            running_loss += loss.item()
            epoch_steps += 1
            if i % 4 == 3:
                running_loss = 0.0
        val_loss, val_steps, total, correct = 0.0, 0, 0, 0
        for inputs, labels in valloader:
            with torch.no_grad():
                outputs = net(inputs)
                _, predicted = torch.max(outputs.data, 1)
                total += labels.size(0)
                correct += (predicted == labels).sum().item()
                val_loss += criterion(outputs, labels).cpu().numpy()
                val_steps += 1
        checkpoint_data = {"epoch": epoch, "net_state_dict": net.state_dict(),
                           "optimizer_state_dict": optimizer.state_dict()}
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            data_path = os.path.join(checkpoint_dir, "data.pkl")
            with open(data_path, "wb") as fp:
                pickle.dump(checkpoint_data, fp)
            with open(data_path, "rb") as fp:
                restored = pickle.load(fp)
        reports.append({"loss": float(val_loss / val_steps), "accuracy": correct / total,
                        "epoch": restored["epoch"]})
    return reports, restored


def test_accuracy(net, device="cpu"):
    _, testset = load_data()
    testloader = DataLoader(testset, batch_size=4, shuffle=False, num_workers=0)
    correct = total = 0
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images.to(device))
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels.to(device)).sum().item()
    return correct / total


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    config = {"l1": 16, "l2": 8, "lr": 0.05, "batch_size": 8}
    net = Net(config["l1"], config["l2"])
    if initial_state is not None:
        net.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    losses = []
    reports, restored = train_cifar(config, net, losses, compile)
    best = Net(config["l1"], config["l2"])
    best.load_state_dict(restored["net_state_dict"])
    values = {"val_loss": reports[-1]["loss"], "val_accuracy": reports[-1]["accuracy"],
              "epochs": ",".join(str(r["epoch"]) for r in reports),
              "test_accuracy": test_accuracy(best),
              "momentum_restored": len(restored["optimizer_state_dict"]["state"])}
    return {"losses": losses, "values": values, "initial_state": initial}
