"""A model whose forward updates its own buffers, trained with a compiled model
(`model.compile()`): a running call counter buffer incremented in forward while training,
BatchNorm with `momentum=None` (a cumulative average of the batch statistics, counted in
`num_batches_tracked`), and a hand-written running-mean normalizer; the model is toggled between
train and eval between compiled calls (evaluation every few steps uses the running statistics
and leaves the buffers alone)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class RunningNorm(nn.Module):
    """Normalizes by a running mean it keeps itself, updated only while training."""

    def __init__(self, features, momentum=0.2):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.mean.mul_(1 - self.momentum).add_(x.mean(0), alpha=self.momentum)
                self.calls += 1
        return x - self.mean


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = RunningNorm(4)
        self.fc1 = nn.Linear(4, 10, bias=False)
        self.bn = nn.BatchNorm1d(10, momentum=None)
        self.fc2 = nn.Linear(10, 1)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(self.norm(x)))))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(4)
    x = torch.from_numpy((rng.normal(size=(64, 4)) + 2.0).astype(np.float32))
    y = torch.from_numpy(rng.normal(size=(64, 1)).astype(np.float32))
    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    if compile:
        model.compile()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses, evals = [], []
    for step in range(12):
        i = (step % 4) * 16
        model.train()
        optimizer.zero_grad()
        loss = F.mse_loss(model(x[i:i + 16]), y[i:i + 16])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 3 == 2:
            model.eval()
            with torch.no_grad():
                evals.append(F.mse_loss(model(x), y).item())
    values = {k: v.clone() for k, v in model.state_dict().items()}
    values["evals"] = torch.tensor(evals)
    return {"losses": losses, "values": values, "initial_state": initial}
