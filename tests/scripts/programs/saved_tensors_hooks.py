"""The hooks-for-autograd-saved-tensors tutorial: what a grad_fn saves (`_saved_self`,
`_saved_other` are the inputs themselves; exp's `_saved_result` equals the output but is
another tensor object), saved_tensors_hooks whose pack result is a tensor, a list index, a
(tensor, closure) pair or a repr string evaluated back, save_on_cpu, saving to disk with
torch.save/torch.load in the hooks (a file deleted on first unpack fails a second access; a
self-deleting temp file object does not), and a model whose large saved tensors go to disk
while it trains, wrapped in nn.DataParallel."""
import os
import tempfile
import uuid

import torch
import torch.nn as nn


def saved_attributes(values):
    a = torch.randn(5, requires_grad=True)
    b = torch.ones(5, requires_grad=True)
    y = a * b
    values["saved_self_is_a"] = y.grad_fn._saved_self is a
    values["saved_other_is_b"] = y.grad_fn._saved_other is b
    a = torch.randn(5, requires_grad=True)
    y = torch.exp(a)
    values["saved_result_equal"] = y.grad_fn._saved_result.equal(y)
    values["saved_result_is_y"] = y.grad_fn._saved_result is y


def unusual_packs(values):
    events = []

    def pack_hook(x):
        events.append(f"pack{tuple(x.shape)}")
        return x

    def unpack_hook(x):
        events.append(f"unpack{tuple(x.shape)}")
        return x

    a = torch.ones(5, requires_grad=True)
    b = torch.ones(5, requires_grad=True) * 2
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, unpack_hook):
        y = a * b
    y.sum().backward()
    values["events"] = ",".join(events)
    values["a_grad"] = a.grad

    x = torch.randn(5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda x: x * 4, lambda x: x / 4):
        y = torch.pow(x, 2)
    y.sum().backward()
    values["scaled_pack"] = x.grad.equal(2 * x)

    storage = []

    def pack_index(x):
        storage.append(x)
        return len(storage) - 1

    x = torch.randn(5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack_index, lambda i: storage[i]):
        y = x * x
    y.sum().backward()
    values["index_pack"] = x.grad.equal(2 * x)
    values["stored"] = len(storage)

    def pack_shifted(x):
        delta = torch.randn(*x.size())
        return x - delta, lambda x: x + delta

    x = torch.randn(5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack_shifted, lambda p: p[1](p[0])):
        y = x * x
    y.sum().backward()
    values["tuple_pack"] = torch.allclose(x.grad, 2 * x)
    values["tuple_grad"] = x.grad

    x = torch.randn(5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda x: repr(x),
                                                  lambda x: eval("torch." + x)):
        y = x * x
    y.sum().backward()
    values["repr_pack"] = bool(torch.all(x.grad - 2 * x <= 1e-4))

    model = nn.Sequential(nn.Linear(10, 20), SaveToCpu(nn.Linear(20, 20)), nn.Linear(20, 10))
    x = torch.randn(10)
    model(x).sum().backward()
    values["save_on_cpu_grad"] = model[1].module.weight.grad


class SaveToCpu(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        with torch.autograd.graph.save_on_cpu():
            return self.module(*args, **kwargs)


class SelfDeletingTempFile:
    def __init__(self, directory):
        self.name = os.path.join(directory, str(uuid.uuid4()))

    def __del__(self):
        os.remove(self.name)


class SaveToDisk(nn.Module):
    """Runs `module` with its saved tensors of at least `threshold` elements on disk."""

    def __init__(self, module, directory, threshold):
        super().__init__()
        self.module, self.directory, self.threshold = module, directory, threshold

    def pack_hook(self, x):
        if x.numel() < self.threshold:
            return x
        temp_file = SelfDeletingTempFile(self.directory)
        torch.save(x, temp_file.name)
        return temp_file

    def unpack_hook(self, tensor_or_file):
        if isinstance(tensor_or_file, torch.Tensor):
            return tensor_or_file
        return torch.load(tensor_or_file.name)

    def forward(self, *args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(self.pack_hook, self.unpack_hook):
            return self.module(*args, **kwargs)


def disk_hooks(values, directory):
    def pack_hook(tensor):
        name = os.path.join(directory, str(uuid.uuid4()))
        torch.save(tensor, name)
        return name

    def unpack_and_delete(name):
        tensor = torch.load(name)
        os.remove(name)
        return tensor

    x = torch.ones(5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, unpack_and_delete):
        y = x.pow(2)
    values["first_access"] = y.grad_fn._saved_self
    try:
        y.grad_fn._saved_self
        values["double_access"] = "succeeded"
    except Exception:
        values["double_access"] = "failed"

    files = os.path.join(directory, "self_deleting")
    os.mkdir(files)

    def pack_to_file(tensor):
        temp_file = SelfDeletingTempFile(files)
        torch.save(tensor, temp_file.name)
        return temp_file

    x = torch.ones(5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack_to_file,
                                                  lambda f: torch.load(f.name)):
        y = x.sin()
    values["files_while_alive"] = len(os.listdir(files))
    first, second = y.grad_fn._saved_self, y.grad_fn._saved_self
    values["self_deleting_twice"] = bool(first.equal(second))
    y.sum().backward()
    del y
    values["files_after_backward"] = len(os.listdir(files))
    values["x_grad"] = x.grad
    os.rmdir(files)


def main(seed=0, compile=False, initial_state=None, steps=6):
    torch.manual_seed(seed)
    values = {}
    saved_attributes(values)
    unusual_packs(values)
    with tempfile.TemporaryDirectory() as directory:
        with tempfile.TemporaryDirectory() as scratch:
            disk_hooks(values, scratch)
        net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(),
                            SaveToDisk(nn.Sequential(nn.Linear(64, 64), nn.Tanh()), directory,
                                       threshold=1000),
                            nn.Linear(64, 1))
        if initial_state is not None:
            net.load_state_dict(initial_state)
        initial = {k: v.clone() for k, v in net.state_dict().items()}
        model = nn.DataParallel(net)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x = torch.randn(32, 16)
        target = x[:, :4].sum(1, keepdim=True).sin()
        losses, files_in_backward = [], []

        def train_step(x, target):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), target)
            files_in_backward.append(len(os.listdir(directory)))
            loss.backward()
            optimizer.step()
            return loss

        if compile:
            train_step = torch.compile(train_step)
        for _ in range(steps):
            losses.append(train_step(x, target).item())
        values["files_during_training"] = ",".join(map(str, files_in_backward))
        values["files_after_training"] = len(os.listdir(directory))
    values["wrapped"] = type(model.module[2]).__name__
    return {"losses": losses, "values": values, "initial_state": initial}
