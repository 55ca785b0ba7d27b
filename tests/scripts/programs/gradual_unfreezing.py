"""Gradual unfreezing with discriminative learning rates, as ULMFiT and fine-tuning guides write
it: a pretrained backbone (a stack of blocks, frozen by `requires_grad_(False)`) under a fresh
classifier head; the optimizer starts with the head's parameters alone, and each epoch the next
block from the top is unfrozen with `requires_grad_(True)` and handed to the optimizer by
`opt.add_param_group({"params": ..., "lr": base_lr / 2.6 ** depth})` (ULMFiT's factor); a
slanted-triangular schedule written by hand: every group's `lr` set from its own
`initial_lr`; BatchNorm in the backbone, weight decay by AdamW. The training step is the
compiled function, called across the unfreezings: a replay must not keep the frozen set of
the step it was traced at."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)     # (BatchNorm follows)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x):
        return x + F.gelu(self.norm(self.linear(x)))


class Classifier(nn.Module):
    def __init__(self, in_dim=10, dim=24, n_blocks=3, n_classes=4):
        super().__init__()
        self.stem = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(n_blocks))
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(dim, n_classes))

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(13)
    x_all = torch.from_numpy(rng.standard_normal((96, 10)).astype(np.float32))
    w_true = rng.standard_normal((10, 4)).astype(np.float32)
    y_all = torch.from_numpy((x_all.numpy() @ w_true + 0.3 * np.sin(3 * x_all.numpy()[:, :4]))
                             .argmax(1).astype(np.int64))
    model = Classifier()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    # "pretrained" backbone: everything but the head frozen
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    base_lr = 1e-2
    optimizer = torch.optim.AdamW([{"params": model.head.parameters(), "lr": base_lr}],
                                  weight_decay=0.01)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    unfreeze_order = [model.blocks[2], model.blocks[1], model.blocks[0], model.stem]

    def train_step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, n_trainable, lrs = [], [], []
    steps_per_epoch, epochs = 3, 5
    total = steps_per_epoch * epochs
    step = 0
    for epoch in range(epochs):
        if 1 <= epoch <= len(unfreeze_order):
            layer = unfreeze_order[epoch - 1]
            layer.requires_grad_(True)
            optimizer.add_param_group({"params": list(layer.parameters()),
                                       "lr": base_lr / (2.6 ** epoch)})
            optimizer.param_groups[-1]["initial_lr"] = optimizer.param_groups[-1]["lr"]
        model.train()
        for x, y in zip(x_all.split(32), y_all.split(32)):
            # slanted triangular: a short warm-up, then a long linear decay
            cut = int(total * 0.2)
            p = step / cut if step < cut else 1 - (step - cut) / (cut * (1 / 0.2 - 1))
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * (1 + p * 31) / 32
            losses.append(train_step(x, y).item())
            step += 1
        n_trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
        lrs.append(optimizer.param_groups[-1]["lr"])

    model.eval()
    with torch.no_grad():
        logits = model(x_all)
    values = {"n_trainable": str(n_trainable), "lrs": torch.tensor(lrs),
              "n_groups": len(optimizer.param_groups),
              "accuracy": (logits.argmax(1) == y_all).float().mean(),
              "stem_w": model.stem.weight.detach().clone(),
              "block0_running_mean": model.blocks[0].norm.running_mean.clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
