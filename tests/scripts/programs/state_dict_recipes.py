"""State-dict recipes: what a state_dict holds (model and optimizer), saving several models
and optimizers in one file, zeroing gradients between steps, the module_load_state_dict tips
(torch.load with mmap=True, building the model on the meta device, load_state_dict with
assign=True) and the swap_tensors recipe (torch.utils.swap_tensors, a module's parameter
replaced out of place leaves the optimizer holding the old one, a __torch_dispatch__ wrapper
subclass weight converted by .bfloat16() with and without
torch.__future__.set_swap_module_params_on_conversion, and a `module_load` __torch_function__
handler turning the loaded tensors into the subclass)."""
import os
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

aten = torch.ops.aten


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(4 * 3 * 3, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class ScaledWeight(torch.Tensor):
    """A toy wrapper subclass: a payload tensor and a scale."""

    @staticmethod
    def __new__(cls, elem, scale):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, dtype=elem.dtype, layout=elem.layout, device=elem.device,
            strides=elem.stride(), storage_offset=elem.storage_offset())

    def __init__(self, elem, scale):
        self.elem = elem
        self.scale = scale

    def __repr__(self):
        return f"ScaledWeight({self.elem}, scale={self.scale})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args, kwargs):
        if func in (aten.detach.default, aten._to_copy.default):
            return cls(func(args[0].elem, *args[1:], **kwargs), args[0].scale)
        raise NotImplementedError(f"Unsupported function {func}")


@classmethod
def load_as_scaled(cls, func, types, args=(), kwargs=None):
    kwargs = {} if kwargs is None else kwargs
    if func is torch.Tensor.module_load:
        dest, src = args[0], args[1]
        return ScaledWeight(src, dest.scale)
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


def to_scaled(m):
    if isinstance(m, nn.Linear):
        m.weight = nn.Parameter(ScaledWeight(m.weight, 0.5),
                                requires_grad=m.weight.requires_grad)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    values = {}
    net_a, net_b = Net(), Net()
    if initial_state is not None:
        net_a.load_state_dict(initial_state["a"])
        net_b.load_state_dict(initial_state["b"])
    initial = {"a": {k: v.clone() for k, v in net_a.state_dict().items()},
               "b": {k: v.clone() for k, v in net_b.state_dict().items()}}
    opt_a = optim.SGD(net_a.parameters(), lr=0.05, momentum=0.9)
    opt_b = optim.SGD(net_b.parameters(), lr=0.05, momentum=0.9)
    values["model_keys"] = ",".join(f"{k}:{tuple(v.shape)}" for k, v in
                                    net_a.state_dict().items())
    values["opt_groups"] = str({k: v for k, v in opt_a.state_dict()["param_groups"][0].items()
                                if k in ("lr", "momentum", "params", "nesterov")})

    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 3, (16,))
    criterion = nn.CrossEntropyLoss()

    def train_step(net, opt, xb, yb):
        opt.zero_grad()
        loss = criterion(net(xb), yb)
        loss.backward()
        opt.step()
        return loss

    step_fn = torch.compile(train_step) if compile else train_step
    losses = []
    for step in range(4):
        for net, opt in ((net_a, opt_a), (net_b, opt_b)):
            xb, yb = x[4 * step:4 * step + 4], y[4 * step:4 * step + 4]
            losses.append(step_fn(net, opt, xb, yb).item())
    values["grad_after_zero"] = str(net_a.fc1.weight.grad is None)
    net_a.zero_grad(set_to_none=False)
    values["grad_zeroed"] = net_a.fc1.weight.grad
    values["momentum_keys"] = ",".join(sorted(opt_a.state_dict()["state"][0]))

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "models.tar")
        torch.save({"modelA_state_dict": net_a.state_dict(),
                    "modelB_state_dict": net_b.state_dict(),
                    "optimizerA_state_dict": opt_a.state_dict(),
                    "optimizerB_state_dict": opt_b.state_dict()}, path)
        new_a, new_b = Net(), Net()
        new_opt_a = optim.SGD(new_a.parameters(), lr=0.05, momentum=0.9)
        checkpoint = torch.load(path, weights_only=True)
        new_a.load_state_dict(checkpoint["modelA_state_dict"])
        new_b.load_state_dict(checkpoint["modelB_state_dict"])
        new_opt_a.load_state_dict(checkpoint["optimizerA_state_dict"])
        new_a.eval()
        values["restored_a"] = new_a(x[:4])
        values["restored_b"] = new_b.eval()(x[:4])
        new_opt_a.zero_grad()
        criterion(new_a(x[:4]), y[:4]).backward()
        new_opt_a.step()
        values["resumed_step"] = new_a.fc2.weight

        # module_load_state_dict_tips: mmap, meta device, assign=True
        sd_path = os.path.join(tmp, "checkpoint.pth")
        torch.save(net_b.state_dict(), sd_path)
        state_dict = torch.load(sd_path, mmap=True, weights_only=True)
        with torch.device("meta"):
            meta_model = Net()
        values["meta_device"] = str(meta_model.fc1.weight.device)
        meta_model.load_state_dict(state_dict, assign=True)
        values["assigned_device"] = str(meta_model.fc1.weight.device)
        values["assigned_is_param"] = isinstance(meta_model.fc1.weight, nn.Parameter)
        values["assigned_out"] = meta_model.eval()(x[:4])

    # swap_tensors
    t1, t2 = torch.arange(2), torch.arange(3)
    torch.utils.swap_tensors(t1, t2)
    values["swapped"] = f"{t1.tolist()}|{t2.tolist()}"
    mod = nn.Linear(1, 2, bias=False)
    opt = optim.SGD(mod.parameters())
    mod.weight = nn.Parameter(2 * mod.weight)
    values["optimizer_sees_new_weight"] = opt.param_groups[0]["params"][0] is mod.weight

    m = nn.Linear(3, 5)
    m.weight = nn.Parameter(ScaledWeight(m.weight, 0.5))
    weight_id = id(m.weight)
    m.bfloat16()
    values["plain_dtype"] = str(m.weight.dtype).split(".")[-1]
    values["plain_elem_dtype"] = str(m.weight.elem.dtype).split(".")[-1]
    values["plain_kept_id"] = id(m.weight) == weight_id

    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m = nn.Linear(3, 5)
        m.weight = nn.Parameter(ScaledWeight(m.weight, 0.5))
        weight_id = id(m.weight)
        m.bfloat16()
        values["swap_dtype"] = str(m.weight.dtype).split(".")[-1]
        values["swap_elem_dtype"] = str(m.weight.elem.dtype).split(".")[-1]
        values["swap_kept_id"] = id(m.weight) == weight_id
        values["swap_bias_dtype"] = str(m.bias.dtype).split(".")[-1]

        ScaledWeight.__torch_function__ = load_as_scaled
        with torch.device("meta"):
            m = nn.Linear(3, 5)
            m.apply(to_scaled)
        source = nn.Linear(3, 5).state_dict()
        m.load_state_dict(source, assign=True)
        values["loaded_weight_type"] = type(m.weight).__name__
        values["loaded_elem"] = m.weight.elem.detach()
        values["loaded_bias_device"] = str(m.bias.device)
        values["loaded_scale"] = m.weight.scale
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
        del ScaledWeight.__torch_function__
    return {"losses": losses, "values": values, "initial_state": initial}
