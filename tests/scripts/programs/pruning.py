"""Pruning tutorial: prune a LeNet's tensors with torch.nn.utils.prune (random and L1
unstructured, Ln structured over output channels, global L1 over several layers, a custom
BasePruningMethod), look at weight_orig / weight_mask in named_parameters / named_buffers and
at the forward pre-hooks, make pruning permanent with remove, then train the pruned net and
check the pruned entries stay zero."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune


class LeNet(nn.Module):
    def __init__(self):
        super(LeNet, self).__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 2 * 2, 24)
        self.fc2 = nn.Linear(24, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, int(x.nelement() / x.shape[0]))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class EveryOtherPruningMethod(prune.BasePruningMethod):
    """Prune every other entry of what is left."""
    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        mask = default_mask.clone()
        mask.view(-1)[::2] = 0
        return mask


def every_other_unstructured(module, name):
    EveryOtherPruningMethod.apply(module, name)
    return module


def sparsity(t):
    return float(torch.sum(t == 0)) / float(t.nelement())


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    values = {}

    # a first net: inspect what pruning does to a module
    model = LeNet()
    if initial_state is not None:
        model.load_state_dict(initial_state["inspect"])
    initial = {"inspect": {k: v.clone() for k, v in model.state_dict().items()}}
    module = model.conv1
    values["params_before"] = ",".join(n for n, _ in module.named_parameters())
    prune.random_unstructured(module, name="weight", amount=0.3)
    values["params_after"] = ",".join(n for n, _ in module.named_parameters())
    values["buffers_after"] = ",".join(n for n, _ in module.named_buffers())
    values["random_zeros"] = int((module.weight == 0).sum())
    values["random_mask_sum"] = module.weight_mask.sum()
    values["random_mask"] = module.weight_mask.clone()
    values["hooks"] = len(module._forward_pre_hooks)
    # the pruned weight is orig * mask, recomputed before every forward
    values["weight_is_orig_times_mask"] = bool(
        torch.equal(module.weight, module.weight_orig * module.weight_mask))
    prune.l1_unstructured(module, name="bias", amount=3)
    values["bias"] = module.bias
    values["bias_mask"] = module.bias_mask
    # iterative pruning: Ln structured on top of the random mask; the hook becomes a container
    prune.ln_structured(module, name="weight", amount=0.5, n=2, dim=0)
    hook = None
    for h in module._forward_pre_hooks.values():
        if h._tensor_name == "weight":
            hook = h
    values["history"] = ",".join(type(m).__name__ for m in hook)
    values["channels_zeroed"] = int((module.weight.flatten(1).abs().sum(1) == 0).sum())
    values["state_dict_keys"] = ",".join(model.state_dict().keys())
    prune.remove(module, "weight")
    values["params_removed"] = ",".join(n for n, _ in module.named_parameters())
    values["buffers_removed"] = ",".join(n for n, _ in module.named_buffers())

    # prune many parameters of a model, by layer type
    new_model = LeNet()
    if initial_state is not None:
        new_model.load_state_dict(initial_state["many"])
    initial["many"] = {k: v.clone() for k, v in new_model.state_dict().items()}
    for name, m in new_model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            prune.l1_unstructured(m, name="weight", amount=0.2)
        elif isinstance(m, torch.nn.Linear):
            prune.l1_unstructured(m, name="weight", amount=0.4)
    values["mask_names"] = ",".join(dict(new_model.named_buffers()).keys())
    values["many_fc1_mask"] = new_model.fc1.weight_mask

    # global pruning: the 20% smallest weights over all layers together
    net = LeNet()
    if initial_state is not None:
        net.load_state_dict(initial_state["global"])
    initial["global"] = {k: v.clone() for k, v in net.state_dict().items()}
    parameters_to_prune = ((net.conv1, "weight"), (net.conv2, "weight"), (net.fc1, "weight"),
                           (net.fc2, "weight"), (net.fc3, "weight"))
    prune.global_unstructured(parameters_to_prune, pruning_method=prune.L1Unstructured,
                              amount=0.2)
    for m, name in parameters_to_prune:
        values[f"sparsity_{type(m).__name__}_{m.weight.shape[0]}"] = sparsity(m.weight)
    total = sum(float(torch.sum(m.weight == 0)) for m, _ in parameters_to_prune)
    values["global_sparsity"] = total / sum(m.weight.nelement() for m, _ in parameters_to_prune)

    # a custom pruning method
    every_other_unstructured(net.fc3, name="bias")
    values["custom_bias_mask"] = net.fc3.bias_mask

    # train the globally pruned net: the pruned weights get no gradient and stay zero
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(64, 1, 14, 14)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 4, 64))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)

    def train_step(xb, yb):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for i in range(0, 64, 16):
            losses.append(train_step(x[i:i + 16], y[i:i + 16]).item())
    values["zeros_after_training"] = float(torch.sum(net.fc1.weight == 0))
    values["orig_grad_zero_where_pruned"] = bool(
        (net.fc1.weight_orig.grad[net.fc1.weight_mask == 0] == 0).all())
    for m, name in parameters_to_prune:
        prune.remove(m, name)
    values["fc1_final"] = net.fc1.weight
    values["is_pruned"] = prune.is_pruned(net)
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
