"""The "Visualizing Gradients" tutorial: two deep sigmoid MLPs, with and without BatchNorm1d;
forward hooks on every leaf module register tensor hooks on its output that collect the
output's gradient during backward; both trained with SGD + momentum, then the mean absolute
gradient per layer depth (the tutorial's plot data; no plot here)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


def fc_layer(in_size, out_size, norm_layer):
    return nn.Sequential(nn.Linear(in_size, out_size), norm_layer(out_size), nn.Sigmoid())


class Net(nn.Module):
    def __init__(self, in_size=28 * 28, hidden_size=32, out_size=10, num_layers=3,
                 batchnorm=False):
        super().__init__()
        norm_layer = nn.BatchNorm1d if batchnorm else nn.Identity
        layers = [fc_layer(in_size, hidden_size, norm_layer)]
        for _ in range(num_layers - 1):
            layers.append(fc_layer(hidden_size, hidden_size, norm_layer))
        layers.append(nn.Linear(hidden_size, out_size))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.layers(x)


def hook_forward(module_name, grads, hook_backward):
    def hook(module, args, output):
        output.register_hook(hook_backward(module_name, grads))
    return hook


def hook_backward(module_name, grads):
    def hook(grad):
        grads.append((module_name, grad))
    return hook


def get_all_layers(model, hook_forward, hook_backward):
    layers = dict()
    grads = []
    for name, layer in model.named_modules():
        if any(layer.children()) is False:
            layers[layer] = name
            layer.register_forward_hook(hook_forward(name, grads, hook_backward))
    return layers, grads


def get_grads(grads):
    layer_idx, avg_grads = [], []
    for idx, (name, grad) in enumerate(grads):
        if grad is not None:
            avg_grads.append(grad.abs().mean())
            layer_idx.append(len(grads) - 1 - idx)
    return layer_idx, avg_grads


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    x = torch.randn(10, 28, 28)
    y = torch.randint(10, (10,))
    model_bn = Net(batchnorm=True, num_layers=3)
    model_nobn = Net(batchnorm=False, num_layers=3)
    if initial_state is not None:
        model_bn.load_state_dict(initial_state["bn"])
        model_nobn.load_state_dict(initial_state["nobn"])
    initial = {"bn": {k: v.clone() for k, v in model_bn.state_dict().items()},
               "nobn": {k: v.clone() for k, v in model_nobn.state_dict().items()}}
    model_bn.train()
    model_nobn.train()
    optimizer_bn = optim.SGD(model_bn.parameters(), lr=0.01, momentum=0.9)
    optimizer_nobn = optim.SGD(model_nobn.parameters(), lr=0.01, momentum=0.9)
    values = {"layer0_bn": str(model_bn.layers[0]), "layer0_nobn": str(model_nobn.layers[0])}
    layers_bn, grads_bn = get_all_layers(model_bn, hook_forward, hook_backward)
    layers_nobn, grads_nobn = get_all_layers(model_nobn, hook_forward, hook_backward)

    def train_step():
        grads_bn.clear()
        grads_nobn.clear()
        optimizer_bn.zero_grad()
        optimizer_nobn.zero_grad()
        loss_bn = F.cross_entropy(model_bn(x), y)
        loss_nobn = F.cross_entropy(model_nobn(x), y)
        loss_bn.backward()
        loss_nobn.backward()
        optimizer_bn.step()
        optimizer_nobn.step()
        return loss_bn, loss_nobn

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(6):
        loss_bn, loss_nobn = train_step()
        losses += [loss_bn.item(), loss_nobn.item()]

    layer_idx_bn, avg_grads_bn = get_grads(grads_bn)
    layer_idx_nobn, avg_grads_nobn = get_grads(grads_nobn)
    values["layer_names_bn"] = ",".join(name for name, _ in grads_bn)
    values["layer_idx_nobn"] = ",".join(map(str, layer_idx_nobn))
    values["avg_grads_bn"] = torch.stack(avg_grads_bn)
    values["avg_grads_nobn"] = torch.stack(avg_grads_nobn)
    values["layers_bn"] = len(layers_bn)
    return {"losses": losses, "values": values, "initial_state": initial}
