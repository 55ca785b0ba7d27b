"""Channels-last memory format tutorial, trained: tensors made channels-last (`to`,
`contiguous`, `empty(memory_format=...)`, `empty_like` keeping it), a small CNN converted with
`model.to(memory_format=torch.channels_last)` and fed channels-last batches, with the
transforms tutorial's one-hot `target_transform` (`zeros(10).scatter_(0, tensor(y), value=1)`)
and the introyt tensors tutorial's `torch.rand(..., out=c)`."""
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class ShapesDataset(Dataset):
    def __init__(self, images, labels, target_transform=None):
        self.images, self.labels = images, labels
        self.target_transform = target_transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        label = int(self.labels[idx])
        if self.target_transform:
            label = self.target_transform(label)
        return self.images[idx], label


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 2 * 2, 4)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.softmax(self.fc(torch.flatten(x, 1)))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = {}
    N, C, H, W = 10, 3, 32, 32
    x = torch.empty(N, C, H, W)
    values["stride"] = str(x.stride())
    x = x.to(memory_format=torch.channels_last)
    values["stride_to"] = str(x.stride())
    values["stride_contiguous"] = str(x.contiguous(memory_format=torch.channels_last).stride())
    values["is_cl"] = x.is_contiguous(memory_format=torch.channels_last)
    special_x = torch.empty(4, 1, 4, 4)
    values["special"] = str((special_x.is_contiguous(memory_format=torch.channels_last),
                             special_x.is_contiguous()))
    x = torch.empty(N, C, H, W, memory_format=torch.channels_last)
    y = torch.empty_like(x)
    values["strides_made"] = str((x.stride(), x.clone().stride(), y.stride(), (x + y).stride()))
    c = torch.zeros(2, 2)
    torch.rand(2, 2, out=c)
    values["rand_out"] = c

    images = torch.from_numpy(rng.normal(size=(24, 3, 6, 6)).astype(np.float32))
    labels = rng.integers(0, 4, 24)
    one_hot = lambda y: torch.zeros(4, dtype=torch.float).scatter_(0, torch.tensor(y), value=1)
    loader = DataLoader(ShapesDataset(images, labels, target_transform=one_hot), batch_size=8)
    values["first_target"] = next(iter(loader))[1]

    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model = model.to(memory_format=torch.channels_last)
    values["weight_cl"] = model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loss_fn = nn.MSELoss()

    def train_step(xb, yb):
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for xb, yb in loader:
            xb = xb.to(memory_format=torch.channels_last)
            losses.append(train_step(xb, yb).item())
    model.eval()
    with torch.no_grad():
        values["probs"] = model(images[:4].contiguous(memory_format=torch.channels_last))
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
