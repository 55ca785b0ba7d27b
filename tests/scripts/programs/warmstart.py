"""Checkpoint recipes: warmstarting a model from a different model's parameters
(load_state_dict(strict=False) and its missing / unexpected keys, renamed keys), several models
and optimizers saved in one file, torch.load(weights_only=True, mmap=True), and a model built
on the meta device then given its weights with load_state_dict(assign=True); the warmstarted
model is trained after."""
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


class NetA(nn.Module):
    def __init__(self):
        super(NetA, self).__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(4 * 3 * 3, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = x.view(-1, 4 * 3 * 3)
        return self.fc2(F.relu(self.fc1(x)))


class NetB(nn.Module):
    """NetA with a different head and an extra layer: only conv1 and fc1 carry over."""
    def __init__(self):
        super(NetB, self).__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(4 * 3 * 3, 16)
        self.hidden = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.out(F.relu(self.hidden(x)))


class SomeModule(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.linears = nn.ModuleList([nn.Linear(size, size) for i in range(3)])

    def forward(self, x):
        for linear in self.linears:
            x = torch.relu(linear(x))
        return x


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(48, 1, 8, 8)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, 48))
    netA, netB, some = NetA(), NetB(), SomeModule(6)
    if initial_state is not None:
        netA.load_state_dict(initial_state["netA"])
        netB.load_state_dict(initial_state["netB"])
        some.load_state_dict(initial_state["some"])
    initial = {name: {k: v.clone() for k, v in m.state_dict().items()}
               for name, m in (("netA", netA), ("netB", netB), ("some", some))}
    values = {}
    with tempfile.TemporaryDirectory() as tmp:
        # warmstart B from A: the shared layers load, the rest is reported
        path = os.path.join(tmp, "model_a.pt")
        torch.save(netA.state_dict(), path)
        result = netB.load_state_dict(torch.load(path, weights_only=True), strict=False)
        values["missing"] = ",".join(result.missing_keys)
        values["unexpected"] = ",".join(result.unexpected_keys)
        values["fc1_copied"] = bool(torch.equal(netB.fc1.weight, netA.fc1.weight))
        try:
            netB.load_state_dict(torch.load(path, weights_only=True))
            values["strict_error"] = ""
        except RuntimeError as e:
            values["strict_error"] = "Missing key(s)" in str(e) and "Unexpected key(s)" in str(e)
        # the head too, under its new names
        state = torch.load(path, weights_only=True)
        renamed = {k.replace("fc2", "out"): v for k, v in state.items() if k.startswith("fc2")}
        result = netB.load_state_dict(renamed, strict=False)
        values["renamed_missing"] = len(result.missing_keys)
        values["out_copied"] = bool(torch.equal(netB.out.bias, netA.fc2.bias))

        # several models and optimizers in one file
        optimizerA = optim.SGD(netA.parameters(), lr=0.01, momentum=0.9)
        optimizerB = optim.Adam(netB.parameters(), lr=3e-3)
        F.cross_entropy(netA(x[:8]), y[:8]).backward()
        optimizerA.step()
        all_path = os.path.join(tmp, "all.tar")
        torch.save({"modelA_state_dict": netA.state_dict(),
                    "modelB_state_dict": netB.state_dict(),
                    "optimizerA_state_dict": optimizerA.state_dict(),
                    "optimizerB_state_dict": optimizerB.state_dict()}, all_path)
        modelA, modelB = NetA(), NetB()
        optA = optim.SGD(modelA.parameters(), lr=0.5)
        optB = optim.Adam(modelB.parameters())
        checkpoint = torch.load(all_path, weights_only=True)
        modelA.load_state_dict(checkpoint["modelA_state_dict"])
        modelB.load_state_dict(checkpoint["modelB_state_dict"])
        optA.load_state_dict(checkpoint["optimizerA_state_dict"])
        optB.load_state_dict(checkpoint["optimizerB_state_dict"])
        modelA.eval()
        modelB.train()
        values["restored_lr"] = optA.param_groups[0]["lr"]
        values["restored_momentum"] = optA.state[modelA.fc1.weight]["momentum_buffer"]
        values["restored_a_out"] = modelA(x[:4])

        # mmap'd weights-only load, then a meta-device model given them with assign=True
        some_path = os.path.join(tmp, "checkpoint.pth")
        torch.save(some.state_dict(), some_path)
        state_dict = torch.load(some_path, mmap=True, weights_only=True)
        with torch.device("meta"):
            meta_m = SomeModule(6)
        values["meta_device"] = str(meta_m.linears[0].weight.device)
        meta_m.load_state_dict(state_dict, assign=True)
        values["assigned_device"] = str(meta_m.linears[0].weight.device)
        values["assigned_is_param"] = isinstance(meta_m.linears[0].weight, nn.Parameter)
        values["assigned_out"] = meta_m(x[:3, 0, 0, :6])
        del state_dict

    # train the warmstarted B
    def train_step(xb, yb):
        optimizerB.zero_grad()
        loss = F.cross_entropy(netB(xb), yb)
        loss.backward()
        optimizerB.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for i in range(0, 48, 16):
            losses.append(train_step(x[i:i + 16], y[i:i + 16]).item())
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
