"""MNIST RNN (pytorch/examples mnist_rnn/main.py): LSTM over image rows, BatchNorm1d,
Dropout2d on the (batch, features) output, Adadelta + StepLR; synthetic 10x10 digits."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.rnn = nn.LSTM(input_size=10, hidden_size=24, batch_first=True)
        self.batchnorm = nn.BatchNorm1d(24)
        self.dropout1 = nn.Dropout2d(0.25)
        self.dropout2 = nn.Dropout2d(0.5)
        self.fc1 = nn.Linear(24, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, input):
        input = input.reshape(-1, 10, 10)
        output, hidden = self.rnn(input)
        output = output[:, -1, :]
        output = self.batchnorm(output)
        output = self.dropout1(output)
        output = self.fc1(output)
        output = F.relu(output)
        output = self.dropout2(output)
        output = self.fc2(output)
        output = F.log_softmax(output, dim=1)
        return output


def batches(n, batch_size, rng):
    templates = np.random.default_rng(7).normal(size=(10, 1, 10, 10)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    images = templates[labels] + 0.7 * rng.normal(size=(n, 1, 10, 10)).astype(np.float32)
    return [(torch.from_numpy(images[i:i + batch_size]), torch.from_numpy(labels[i:i + batch_size]))
            for i in range(0, n, batch_size)]


def main(seed=0, compile=False, initial_state=None, epochs=3):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_loader, test_loader = batches(192, 32, rng), batches(96, 96, rng)
    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)

    def train_step(data, target):
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(1, epochs + 1):
        model.train()
        for data, target in train_loader:
            losses.append(train_step(data, target).item())
        model.eval()
        test_loss, correct = 0, 0
        with torch.no_grad():
            for data, target in test_loader:
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction='sum').item()
                pred = output.argmax(dim=1, keepdim=True)
                correct += pred.eq(target.view_as(pred)).sum().item()
        scheduler.step()
    return {"losses": losses, "test_loss": test_loss / 96, "accuracy": correct / 96,
            "initial_state": initial}


if __name__ == "__main__":
    print(main())
