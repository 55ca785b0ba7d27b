"""Weight averaging inside a compiled training step: a hand-written EMA class (shadow tensors
updated under no_grad with `lerp_`, and a second decay written as `mul_` then `add_`) called in
the step after `optimizer.step()`, and `torch.optim.swa_utils.AveragedModel` whose
`update_parameters` runs each step; at the end `update_bn` recomputes the averaged model's
BatchNorm statistics and the EMA weights are copied into a fresh model for evaluation."""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class EMA:
    def __init__(self, model, decay=0.9):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.slow = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model):
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param, 1.0 - self.decay)
            self.slow[name].mul_(0.99).add_(param, alpha=0.01)

    def copy_to(self, model):
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(self.shadow[name])


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16)
    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    ema = EMA(model)
    swa_model = AveragedModel(model)

    def train_step(inputs, target):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), target)
        loss.backward()
        optimizer.step()
        ema.update(model)
        swa_model.update_parameters(model)
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    model.train()
    for epoch in range(3):
        for inputs, target in loader:
            losses.append(train_step(inputs, target).item())
    update_bn(loader, swa_model)
    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model)
    swa_model.eval()
    ema_model.eval()
    test = torch.from_numpy(x[:8])
    with torch.no_grad():
        values = {"swa_out": swa_model(test), "ema_out": ema_model(test),
                  "slow_fc1": ema.slow["fc1.weight"].clone(),
                  "swa_running_mean": swa_model.module.bn.running_mean.clone(),
                  "n_averaged": int(swa_model.n_averaged),
                  "final_fc2": model.fc2.weight.detach().clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
