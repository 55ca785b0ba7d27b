"""Module hooks recipe: forward pre-hooks and forward hooks (with_kwargs=True, prepend=True,
a hook that replaces the input or the output), an activation-capturing hook for feature
extraction, full backward hooks and backward pre-hooks (recording gradient norms, scaling
the incoming gradient), the global register_module_forward_hook, and removal through the
returned handles; a small net trained with a gradient-scaling hook in place."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Gate(nn.Module):
    def forward(self, x, scale=1.0):
        return x * scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.gate = Gate()
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.gate(self.fc1(x), scale=2.0)))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(32, 6)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, 32))
    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    values, order = {}, []

    # forward pre-hooks: one sees and rewrites the keyword arguments, a prepended one runs first
    def halve_scale(module, args, kwargs):
        order.append("halve_scale")
        kwargs = dict(kwargs, scale=kwargs["scale"] / 2)
        return args, kwargs

    def first(module, args):
        order.append("first")

    h_kwargs = model.gate.register_forward_pre_hook(halve_scale, with_kwargs=True)
    h_first = model.gate.register_forward_pre_hook(first, prepend=True)

    # forward hook with kwargs that replaces the output; a capturing hook per layer
    def clamp_output(module, args, kwargs, output):
        order.append("clamp_output")
        return output.clamp(min=-kwargs["scale"], max=kwargs["scale"])

    h_clamp = model.gate.register_forward_hook(clamp_output, with_kwargs=True)
    activation = {}

    def get_activation(name):
        def hook(model, input, output):
            activation[name] = output.detach()
        return hook

    handles = [model.fc1.register_forward_hook(get_activation("fc1")),
               model.fc2.register_forward_hook(get_activation("fc2"))]

    # the global hook sees every module's call
    seen = []
    h_global = nn.modules.module.register_module_forward_hook(
        lambda module, input, output: seen.append(type(module).__name__))

    out = model(x[:4])
    h_global.remove()
    model(x[:4])
    values["order"] = ",".join(order)
    values["seen"] = ",".join(seen)
    values["out_with_hooks"] = out
    values["fc1_activation"] = activation["fc1"]
    values["fc2_is_out"] = bool(torch.equal(activation["fc2"], out.detach()))
    for h in (h_kwargs, h_first, h_clamp, *handles):
        h.remove()
    values["hooks_left"] = len(model.gate._forward_pre_hooks) + len(model.gate._forward_hooks)
    values["out_without_hooks"] = model(x[:4])

    # backward hooks: record gradient norms; a backward pre-hook scales the gradient coming in
    grad_norms = []

    def record(module, grad_input, grad_output):
        grad_norms.append((grad_input[0].norm().item(), grad_output[0].norm().item()))

    def scale_grad(module, grad_output):
        return (grad_output[0] * 0.5,)

    h_record = model.fc2.register_full_backward_hook(record)
    h_scale = model.fc2.register_full_backward_pre_hook(scale_grad)
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    values["grad_norms"] = torch.tensor(grad_norms[0])
    values["fc1_grad_scaled"] = model.fc1.weight.grad.clone()
    model.zero_grad()
    h_record.remove()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def train_step(xb, yb):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for i in range(0, 32, 8):
            losses.append(train_step(x[i:i + 8], y[i:i + 8]).item())
    h_scale.remove()
    values["fc1_after"] = model.fc1.weight
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
