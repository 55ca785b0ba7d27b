"""Stochastic weight averaging recipe (torch.optim.swa_utils): a small MLP with BatchNorm trained
with SGD under CosineAnnealingLR, then from swa_start on under SWALR while an AveragedModel
averages the weights each epoch; update_bn recomputes the averaged model's BatchNorm statistics.
Beside it, an EMA of the weights (get_ema_multi_avg_fn), an EMA through a custom avg_fn, and an
averaged model that also averages buffers (use_buffers=True)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def main(seed=0, compile=False, initial_state=None, epochs=8):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(10, 3)).astype(np.float32)
    x = rng.normal(size=(96, 10)).astype(np.float32)
    y = (x @ w + 0.5 * rng.normal(size=(96, 3))).argmax(1)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=24)
    test_input = torch.from_numpy(rng.normal(size=(16, 10)).astype(np.float32))

    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    swa_model = AveragedModel(model)
    ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ema_avg = lambda averaged_model_parameter, model_parameter, num_averaged: \
        0.1 * averaged_model_parameter + 0.9 * model_parameter
    custom_model = AveragedModel(model, avg_fn=ema_avg)
    buffers_model = AveragedModel(model, use_buffers=True)
    scheduler = CosineAnnealingLR(optimizer, T_max=epochs)
    swa_start = 4
    swa_scheduler = SWALR(optimizer, swa_lr=0.05, anneal_epochs=2, anneal_strategy="cos")

    def train_step(inputs, target):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, lrs = [], []
    for epoch in range(epochs):
        model.train()
        for inputs, target in loader:
            losses.append(train_step(inputs, target).item())
            ema_model.update_parameters(model)
        if epoch > swa_start:
            swa_model.update_parameters(model)
            custom_model.update_parameters(model)
            buffers_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])

    # the averaged weights' BatchNorm statistics, recomputed over the training data
    update_bn(loader, swa_model)
    swa_model.eval()
    ema_model.eval()
    buffers_model.eval()
    with torch.no_grad():
        preds = swa_model(test_input)
        ema_preds = ema_model(test_input)
        buffers_preds = buffers_model(test_input)
    values = {"swa_preds": preds, "ema_preds": ema_preds, "buffers_preds": buffers_preds,
              "n_averaged": swa_model.n_averaged, "ema_n_averaged": ema_model.n_averaged,
              "swa_running_mean": swa_model.module.bn.running_mean,
              "swa_running_var": swa_model.module.bn.running_var,
              "buffers_running_mean": buffers_model.module.bn.running_mean,
              "custom_fc2": custom_model.module.fc2.weight,
              "ema_fc1": ema_model.module.fc1.weight,
              "swa_keys": ",".join(swa_model.state_dict().keys())}
    return {"losses": losses, "lrs": lrs, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
