"""Spatial transformer networks tutorial: a localization net regresses a 2x3 affine matrix
(initialized to the identity), `F.affine_grid` + `F.grid_sample` resample the input, a small
LeNet classifies; SGD, `torch.no_grad()` evaluation with summed nll_loss; on synthetic 16x16
digits shifted at random."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self, dropout=0.5):
        super(Net, self).__init__()
        self.dropout = dropout
        self.conv1 = nn.Conv2d(1, 6, kernel_size=3)
        self.conv2 = nn.Conv2d(6, 10, kernel_size=3)
        self.conv2_drop = nn.Dropout2d(dropout)
        self.fc1 = nn.Linear(40, 20)
        self.fc2 = nn.Linear(20, 10)

        # Spatial transformer localization-network
        self.localization = nn.Sequential(
            nn.Conv2d(1, 4, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Conv2d(4, 6, kernel_size=3),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True)
        )

        # Regressor for the 3 * 2 affine matrix
        self.fc_loc = nn.Sequential(
            nn.Linear(6 * 2 * 2, 16),
            nn.ReLU(True),
            nn.Linear(16, 3 * 2)
        )

        # Initialize the weights/bias with identity transformation
        self.fc_loc[2].weight.data.zero_()
        self.fc_loc[2].bias.data.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))

    # Spatial transformer network forward function
    def stn(self, x):
        xs = self.localization(x)
        xs = xs.view(-1, 6 * 2 * 2)
        theta = self.fc_loc(xs)
        theta = theta.view(-1, 2, 3)

        grid = F.affine_grid(theta, x.size(), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        return x

    def forward(self, x):
        # transform the input
        x = self.stn(x)

        # Perform the usual forward pass
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 40)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def shifted_digits(n, rng):
    """Ten fixed 10x10 patterns placed at a random offset inside a 16x16 frame."""
    patterns = (np.random.default_rng(77).random((10, 10, 10)) > 0.55).astype(np.float32)
    labels = rng.integers(0, 10, n)
    images = np.zeros((n, 1, 16, 16), dtype=np.float32)
    for i, (dy, dx) in enumerate(rng.integers(0, 7, (n, 2))):
        images[i, 0, dy:dy + 10, dx:dx + 10] = patterns[labels[i]]
    images += 0.1 * rng.normal(size=images.shape).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels)


def test(model, device, test_loader):
    with torch.no_grad():
        model.eval()
        test_loss = 0
        correct = 0
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)

            # sum up batch loss
            test_loss += F.nll_loss(output, target, reduction='sum').item()
            # get the index of the max log-probability
            pred = output.max(1, keepdim=True)[1]
            correct += pred.eq(target.view_as(pred)).sum().item()

        test_loss /= len(test_loader.dataset)
        return test_loss, correct / len(test_loader.dataset)


def main(seed=0, compile=False, initial_state=None, epochs=4, dropout=0.5):
    torch.manual_seed(seed)
    device = torch.device("cpu")
    rng = np.random.default_rng(seed)
    train_loader = DataLoader(TensorDataset(*shifted_digits(96, rng)), batch_size=32)
    test_loader = DataLoader(TensorDataset(*shifted_digits(64, rng)), batch_size=32)

    model = Net(dropout).to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def train_step(data, target):
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, test_losses = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            data, target = data.to(device), target.to(device)
            loss = train_step(data, target)
            losses.append(loss.item())
        test_loss, accuracy = test(model, device, test_loader)
        test_losses.append(test_loss)

    # the transformed batch, as the tutorial's visualize_stn draws it
    with torch.no_grad():
        data = next(iter(test_loader))[0]
        transformed = model.stn(data).cpu()
    return {"losses": losses, "test_losses": test_losses, "accuracy": accuracy,
            "transformed": transformed.numpy(), "initial_state": initial}


if __name__ == "__main__":
    print(main())
