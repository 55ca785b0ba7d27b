"""Activation checkpointing recipe: torch.utils.checkpoint.checkpoint(block, x,
use_reentrant=False) around each block of a small residual MLP and checkpoint_sequential over an
nn.Sequential trunk, trained a few steps; the same net without checkpointing gives the same
gradients, and a block with dropout recomputes the same mask (preserve_rng_state)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint, checkpoint_sequential


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Net(nn.Module):
    def __init__(self, dim=16, use_checkpoint=True):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.embed = nn.Linear(8, dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(2)])
        self.trunk = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim),
                                   nn.Tanh())
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            if self.use_checkpoint:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.use_checkpoint:
            x = checkpoint_sequential(self.trunk, 2, x, use_reentrant=False)
        else:
            x = self.trunk(x)
        return self.head(x)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(48, 8)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 4, 48))
    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    plain = Net(use_checkpoint=False)
    plain.load_state_dict(model.state_dict())

    # one backward through both: the checkpointed net's gradients are the plain net's
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(plain(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    same = all(torch.allclose(p.grad, grads[n], rtol=1e-5, atol=1e-7)
               for n, p in plain.named_parameters())
    model.zero_grad()

    # dropout inside a checkpointed region: the recomputation draws the same mask again
    drop = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    inp = x[:6].clone().requires_grad_(True)
    torch.manual_seed(seed + 1)
    out = checkpoint(drop, inp, use_reentrant=False, preserve_rng_state=True)
    out.sum().backward()
    grad_ckpt = inp.grad.clone()
    inp.grad = None
    torch.manual_seed(seed + 1)
    drop(inp).sum().backward()
    dropout_same = bool(torch.equal(inp.grad, grad_ckpt))

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

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
        for i in range(0, 48, 12):
            losses.append(train_step(x[i:i + 12], y[i:i + 12]).item())
    values = {"grad_embed": grads["embed.weight"], "grad_trunk": grads["trunk.2.weight"],
              "same_grads_as_plain": same, "dropout_recomputed_alike": dropout_same,
              "head_after": model.head.weight}
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
