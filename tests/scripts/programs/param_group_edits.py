"""Hyperparameters changed by hand between compiled steps, as users write their own schedules:
`for g in optimizer.param_groups: g["lr"] = ...` each epoch (a step decay and a warmup), and a
second optimizer whose `weight_decay` and `momentum` are changed in its param_groups midway
(SGD), and whose Adam twin has its `betas` swapped; every step is compiled."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    models = [nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 1)) for _ in range(3)]
    if initial_state is not None:
        for i, m in enumerate(models):
            m.load_state_dict(initial_state[str(i)])
    initial = {str(i): {k: v.clone() for k, v in m.state_dict().items()}
               for i, m in enumerate(models)}
    rng = np.random.default_rng(12)
    x = torch.from_numpy(rng.normal(size=(32, 4)).astype(np.float32))
    y = torch.from_numpy(rng.normal(size=(32, 1)).astype(np.float32))
    optimizers = [torch.optim.SGD(models[0].parameters(), lr=0.01),
                  torch.optim.SGD(models[1].parameters(), lr=0.05, momentum=0.0,
                                  weight_decay=0.0),
                  torch.optim.Adam(models[2].parameters(), lr=0.01)]

    def train_step(model, optimizer, inputs, target):
        optimizer.zero_grad()
        loss = F.mse_loss(model(inputs), target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, lrs = [], []
    for epoch in range(6):
        for g in optimizers[0].param_groups:
            g["lr"] = 0.02 * (epoch + 1) if epoch < 3 else 0.06 * 0.5 ** (epoch - 2)
        if epoch == 2:
            for g in optimizers[1].param_groups:
                g["momentum"] = 0.9
                g["weight_decay"] = 0.1
            optimizers[2].param_groups[0]["betas"] = (0.5, 0.9)
            optimizers[2].param_groups[0]["lr"] = 0.03
        if epoch == 4:
            optimizers[1].param_groups[0]["weight_decay"] = 0.0
        lrs.append(optimizers[0].param_groups[0]["lr"])
        for i in range(0, 32, 16):
            for model, opt in zip(models, optimizers):
                losses.append(train_step(model, opt, x[i:i + 16], y[i:i + 16]).item())
    values = {f"{i}_{k}": v.detach().clone() for i, m in enumerate(models)
              for k, v in m.state_dict().items()}
    values["lrs"] = torch.tensor(lrs)
    return {"losses": losses, "values": values, "initial_state": initial}
