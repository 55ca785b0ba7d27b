"""A temporal convolutional network as locuslab/TCN writes it, on the adding problem: residual
`TemporalBlock`s of two dilated causal Conv1d layers (padding (k-1)*d on both sides, the
right end cut off by a `Chomp1d`, and in the second block left padding by `F.pad` instead),
weights under `torch.nn.utils.parametrizations.weight_norm` (its `original0`/`original1`,
g and v), weights drawn `normal_(0, 0.01)` through the parametrization's original, a 1x1
downsample on the residual path where the widths differ, dilations 1, 2, 4, the last time
step to a linear head, Adam with `clip_grad_norm_`, then `remove_parametrizations` folding the
weight back into a plain tensor. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm


class Chomp1d(nn.Module):
    def __init__(self, chomp_size):
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x):
        return x[:, :, :-self.chomp_size].contiguous()


class CausalConv1d(nn.Conv1d):
    """Left padding by F.pad, so the output keeps the input's length."""

    def __init__(self, n_inputs, n_outputs, kernel_size, dilation):
        super().__init__(n_inputs, n_outputs, kernel_size, dilation=dilation)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x):
        return super().forward(F.pad(x, (self.left, 0)))


class TemporalBlock(nn.Module):
    def __init__(self, n_inputs, n_outputs, kernel_size, stride, dilation, padding,
                 dropout=0.0, chomp=True):
        super().__init__()
        if chomp:
            conv1 = nn.Conv1d(n_inputs, n_outputs, kernel_size, stride=stride, padding=padding,
                              dilation=dilation)
            conv2 = nn.Conv1d(n_outputs, n_outputs, kernel_size, stride=stride, padding=padding,
                              dilation=dilation)
        else:
            conv1 = CausalConv1d(n_inputs, n_outputs, kernel_size, dilation)
            conv2 = CausalConv1d(n_outputs, n_outputs, kernel_size, dilation)
        self.conv1 = weight_norm(conv1)
        self.conv2 = weight_norm(conv2)
        self.chomp1 = Chomp1d(padding) if chomp else nn.Identity()
        self.chomp2 = Chomp1d(padding) if chomp else nn.Identity()
        self.net = nn.Sequential(self.conv1, self.chomp1, nn.ReLU(), nn.Dropout(dropout),
                                 self.conv2, self.chomp2, nn.ReLU(), nn.Dropout(dropout))
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.ReLU()
        self.init_weights()

    def init_weights(self):
        with torch.no_grad():
            self.conv1.parametrizations.weight.original1.normal_(0, 0.01)
            self.conv2.parametrizations.weight.original1.normal_(0, 0.01)
        if self.downsample is not None:
            self.downsample.weight.data.normal_(0, 0.01)

    def forward(self, x):
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TCN(nn.Module):
    def __init__(self, input_size, output_size, num_channels, kernel_size=3):
        super().__init__()
        layers = []
        for i, out_channels in enumerate(num_channels):
            dilation = 2 ** i
            in_channels = input_size if i == 0 else num_channels[i - 1]
            layers += [TemporalBlock(in_channels, out_channels, kernel_size, stride=1,
                                     dilation=dilation, padding=(kernel_size - 1) * dilation,
                                     chomp=(i != 1))]
        self.network = nn.Sequential(*layers)
        self.linear = nn.Linear(num_channels[-1], output_size)
        self.linear.weight.data.normal_(0, 0.01)

    def forward(self, x):
        y = self.network(x)
        return self.linear(y[:, :, -1])


def adding_problem(rng, n, length):
    values = rng.uniform(0, 1, (n, length))
    marks = np.zeros((n, length))
    for i in range(n):
        a, b = rng.choice(length, 2, replace=False)
        marks[i, a] = marks[i, b] = 1
    x = np.stack([values, marks], 1).astype(np.float32)
    y = (values * marks).sum(1, keepdims=True).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(4)
    x_train, y_train = adding_problem(rng, 64, 24)
    x_test, y_test = adding_problem(rng, 16, 24)
    model = TCN(2, 1, [12, 12, 16])
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-3)

    def train_step(x, y):
        optimizer.zero_grad()
        output = model(x)
        loss = F.mse_loss(output, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        model.train()
        for x, y in zip(x_train.split(16), y_train.split(16)):
            losses.append(train_step(x, y).item())

    model.eval()
    with torch.no_grad():
        test_loss = F.mse_loss(model(x_test), y_test)
        block = model.network[0]
        g = block.conv1.parametrizations.weight.original0.clone()
        w_param = block.conv1.weight.clone()
        parametrize.remove_parametrizations(block.conv1, "weight")
        after_removal = F.mse_loss(model(x_test), y_test)
    values = {"test_loss": test_loss, "after_removal": after_removal, "g": g,
              "w": w_param, "plain_weight": str(type(block.conv1.weight).__name__),
              "keys": ",".join(k for k in model.state_dict() if k.startswith("network.0.conv1"))}
    return {"losses": losses, "values": values, "initial_state": initial}
