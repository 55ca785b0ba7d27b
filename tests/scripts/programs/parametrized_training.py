"""Parametrized weights trained through a compiled step: `nn.utils.parametrizations.weight_norm`
on one layer, `spectral_norm` (its power iteration updating `_u`/`_v` buffers each training
forward) on another, and a hand-written `nn.utils.parametrize` parametrization (a symmetric
matrix) with `right_inverse`; at the end the spectral norm's evaluation forward and
`remove_parametrizations` leave plain weights equal to the parametrized ones."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm


class Symmetric(nn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(-1, -2)

    def right_inverse(self, A):
        return A.triu()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = weight_norm(nn.Linear(6, 8))
        self.fc2 = spectral_norm(nn.Linear(8, 8))
        self.square = nn.Linear(8, 8)
        parametrize.register_parametrization(self.square, "weight", Symmetric())
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        h = torch.tanh(self.fc2(h))
        h = torch.tanh(self.square(h))
        return self.out(h)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.normal(size=(48, 6)).astype(np.float32))
    y = torch.from_numpy((rng.normal(size=48) > 0).astype(np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)

    def train_step(inputs, target):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    model.train()
    for epoch in range(4):
        for i in range(0, 48, 12):
            losses.append(train_step(x[i:i + 12], y[i:i + 12]).item())
    model.eval()
    with torch.no_grad():
        before = model(x[:6]).clone()
        weights = {"fc1": model.fc1.weight.clone(), "fc2": model.fc2.weight.clone(),
                   "square": model.square.weight.clone()}
    for layer in (model.fc1, model.fc2, model.square):
        parametrize.remove_parametrizations(layer, "weight")
    with torch.no_grad():
        after = model(x[:6])
    values = {"eval_out": before, "plain_out": after,
              "symmetric": bool(torch.equal(weights["square"], weights["square"].t())),
              "plain_params": ",".join(n for n, _ in model.named_parameters())}
    values.update({f"w_{k}": v for k, v in weights.items()})
    return {"losses": losses, "values": values, "initial_state": initial}
