"""60-minute blitz, training a classifier (CIFAR-10 style): the tutorial's Net on 3-channel
images, CrossEntropyLoss, SGD with momentum, shuffled DataLoader, per-class accuracy."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset

classes = ('plane', 'car', 'bird', 'cat')


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 2 * 2, 24)
        self.fc2 = nn.Linear(24, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def make_set(n, rng):
    colors = 2 * np.random.default_rng(11).normal(size=(4, 3, 1, 1)).astype(np.float32)
    labels = rng.integers(0, 4, n)
    images = colors[labels] + 0.5 * rng.normal(size=(n, 3, 14, 14)).astype(np.float32)
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def main(seed=0, compile=False, initial_state=None, epochs=3):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    trainloader = DataLoader(make_set(128, rng), batch_size=16, shuffle=True, num_workers=0)
    testloader = DataLoader(make_set(64, rng), batch_size=16, shuffle=False, num_workers=0)
    net = Net()
    if initial_state is not None:
        net.load_state_dict(initial_state)
    if compile:
        net = torch.compile(net)        # the compiled model, as PyTorch 2 scripts write it
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def train_step(inputs, labels):
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        return loss

    losses = []
    for epoch in range(epochs):
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data
            running_loss += train_step(inputs, labels).item()
        losses.append(running_loss / len(trainloader))
    correct_pred = {classname: 0 for classname in classes}
    total_pred = {classname: 0 for classname in classes}
    correct = 0
    total = 0
    with torch.no_grad():
        for data in testloader:
            images, labels = data
            outputs = net(images)
            _, predictions = torch.max(outputs, 1)
            total += labels.size(0)
            correct += (predictions == labels).sum().item()
            for label, prediction in zip(labels, predictions):
                if label == prediction:
                    correct_pred[classes[label]] += 1
                total_pred[classes[label]] += 1
    return {"losses": losses, "accuracy": correct / total,
            "per_class": {c: correct_pred[c] / max(1, total_pred[c]) for c in classes}}


if __name__ == "__main__":
    print(main())
