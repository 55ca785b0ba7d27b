"""The "Reasoning about shapes" recipe with the "Changing default device" one: output shapes
found on the meta device (a convolution on an input too large to allocate, every layer's output
shape from forward hooks on a LeNet built under `with torch.device("meta")`), a module built
with torch.set_default_device and inside `with torch.device(...)`, then the LeNet materialized
on the CPU (to_empty + reset_parameters) and trained from given weights."""
import timeit

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    values = {}
    t = torch.rand(2, 3, 10, 10, device="meta")
    conv = torch.nn.Conv2d(3, 5, 2, device="meta")
    start = timeit.default_timer()
    out = conv(t)
    end = timeit.default_timer()
    values["small"] = f"{tuple(out.shape)} {out.device} {out.dtype == torch.float32} {out.is_meta}"
    values["timed"] = end - start >= 0
    t_large = torch.rand(2**10, 3, 2**16, 2**16, device="meta")   # 13 PB were it real
    out = conv(t_large)
    values["large"] = f"{tuple(out.shape)} {out.device}"
    values["meta_repr"] = repr(torch.empty(2, 3, device="meta"))

    shapes = []

    def fw_hook(module, input, output):
        shapes.append(f"{type(module).__name__}{tuple(output.shape)}")

    with torch.device("meta"):
        net = Net()
        inp = torch.randn((1024, 3, 32, 32))
    handles = [layer.register_forward_hook(fw_hook) for name, layer in net.named_modules()]
    out = net(inp)
    values["hook_shapes"] = ",".join(shapes)
    values["out_meta"] = f"{tuple(out.shape)} {out.device}"
    for h in handles:
        h.remove()

    # the default device: a global setting, and a block
    torch.set_default_device("meta")
    mod = torch.nn.Linear(20, 30)
    values["default_meta"] = f"{mod.weight.device} {mod(torch.randn(128, 20)).device}"
    torch.set_default_device(None)              # back to no default (the CPU)
    with torch.device("meta"):
        inner = torch.nn.Linear(20, 30).weight.device
    values["devices"] = f"{inner} {torch.nn.Linear(2, 3).weight.device} {torch.zeros(1).device}"
    values["get_default"] = str(torch.get_default_device())

    # the shapes known, build the real thing: materialize the meta LeNet on the CPU
    net = net.to_empty(device="cpu")
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if initial_state is not None:
        net.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    values["materialized"] = str(next(net.parameters()).device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.normal(size=(4, 8, 3, 32, 32)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 10, size=(4, 8)))

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = [train_step(x, y).item() for x, y in zip(images, labels)]
    return {"losses": losses, "values": values, "initial_state": initial}
