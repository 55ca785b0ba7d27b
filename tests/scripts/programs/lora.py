"""LoRA fine-tuning as peft-free research code writes it: a small pretrained-style MLP
classifier is frozen with `requires_grad_(False)`, every `nn.Linear` whose name matches the
target list is replaced by a `LoRALinear` wrapper (module surgery: the parent found through
`named_modules()` and the child swapped with `setattr`), with `A` Kaiming-initialised and `B`
zero, scaled by `alpha / r`, a dropout on the adapter's input; only the adapter parameters go to
the optimizer; the adapters' `state_dict` is saved alone (filtered by name), then merged into
the base weights under `no_grad` (`W += B @ A * scale`) and the merged model must give the same
outputs. The training step is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r=4, alpha=8, dropout=0.0):
        super().__init__()
        self.base = base
        self.r, self.scale = r, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        return out + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    @torch.no_grad()
    def merge(self):
        self.base.weight += self.lora_B @ self.lora_A * self.scale
        self.merged = True


def inject_lora(model, targets, r=4, alpha=8):
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(name.endswith(t) for t in targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, r=r, alpha=alpha))
    return model


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.out(torch.tanh(self.q_proj(x)) * self.v_proj(x)))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(6)
    x_all = torch.from_numpy(rng.standard_normal((64, 12)).astype(np.float32))
    y_all = torch.from_numpy((x_all[:, :3].numpy().sum(1) > 0).astype(np.int64)
                             + (x_all[:, 3].numpy() > 0.5))

    model = nn.Sequential(nn.Linear(12, 16), Block(16), Block(16), nn.Linear(16, 3))
    model.requires_grad_(False)
    inject_lora(model, ["q_proj", "v_proj"])
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for n, p in model.named_parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=2e-2, weight_decay=0.0)

    def train_step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for x, y in zip(x_all.split(16), y_all.split(16)):
            losses.append(train_step(x, y).item())

    lora_state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    model.eval()
    with torch.no_grad():
        before = model(x_all)
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.merge()
        after = model(x_all)
    values = {"lora_keys": ",".join(sorted(lora_state)),
              "counts": f"{n_trainable}/{n_total}",
              "B": model[1].q_proj.lora_B.detach().clone(),
              "merged_w": model[2].v_proj.base.weight.detach().clone(),
              "frozen_grad": str(model[0].weight.grad),
              "before": before, "after": after,
              "merge_diff": bool((before - after).abs().max() < 1e-5)}
    return {"losses": losses, "values": values, "initial_state": initial}
