"""Parameters tagged by attribute, as tutorials and training libraries do: each parameter gets
`p.no_weight_decay` (biases and norm weights) and `p._is_embedding`, the optimizer's param
groups are built from the tags, and an `Optimizer` subclass written as in the optimizer
tutorials keeps its momentum on the parameter itself (`p.momentum_buffer`, made on the first
step, then updated in place) and reads a per-parameter `p.lr_scale`. The train step is
compiled whole."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class TaggedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.fc1 = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, tokens):
        h = self.embed(tokens).mean(1)
        return self.fc2(torch.tanh(self.norm(self.fc1(h))))


class ParamMomentum(torch.optim.Optimizer):
    """SGD with momentum and decoupled weight decay; the buffer lives on the parameter."""

    def __init__(self, params, lr=0.1, momentum=0.9, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["weight_decay"] != 0:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                if not hasattr(p, "momentum_buffer"):
                    p.momentum_buffer = torch.clone(p.grad).detach()
                else:
                    p.momentum_buffer.mul_(group["momentum"]).add_(p.grad)
                p.add_(p.momentum_buffer, alpha=-group["lr"] * getattr(p, "lr_scale", 1.0))


def tag(model):
    for name, p in model.named_parameters():
        p.no_weight_decay = p.ndim == 1 or name.startswith("norm.")
        p._is_embedding = name.startswith("embed.")
        if p._is_embedding:
            p.lr_scale = 0.5


def param_groups(model, weight_decay):
    decay = [p for p in model.parameters() if not p.no_weight_decay]
    no_decay = [p for p in model.parameters() if p.no_weight_decay]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    model = TaggedNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    tag(model)
    opt = ParamMomentum(param_groups(model, 0.05), lr=0.1)

    def train_step(tokens, target):
        opt.zero_grad()
        loss = F.cross_entropy(model(tokens), target)
        loss.backward()
        opt.step()
        return loss

    step = torch.compile(train_step) if compile else train_step
    rng = np.random.default_rng(1)
    losses = []
    for i in range(8):
        tokens = torch.from_numpy(rng.integers(0, 10, size=(12, 5)))
        target = torch.from_numpy(rng.integers(0, 3, size=12))
        losses.append(step(tokens, target).item())
    values = {name: p.detach().clone() for name, p in model.named_parameters()}
    values.update({f"{name}.momentum_buffer": p.momentum_buffer.clone()
                   for name, p in model.named_parameters()})
    values["groups"] = ",".join(str(len(g["params"])) for g in opt.param_groups)
    values["tags"] = ",".join(f"{n}:{int(p.no_weight_decay)}{int(p._is_embedding)}"
                              for n, p in model.named_parameters())
    # the tags live on the parameters only: a state_dict's tensors and a deepcopy's do not
    # carry them (as torch's), while the model keeps them through .double() and .float()
    values["state_dict_tagged"] = hasattr(model.state_dict()["fc1.weight"], "no_weight_decay")
    model.double()
    model.float()
    values["tags_after_double"] = all(hasattr(p, "no_weight_decay") for p in model.parameters())
    return {"losses": losses, "values": values, "initial_state": initial}
