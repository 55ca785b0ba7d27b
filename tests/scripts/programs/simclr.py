"""SimCLR as the popular re-implementations write it: two random augmentations of each image
(random crops by `torch.roll`, noise, flips with `torch.flip` under a per-sample mask), a small
conv encoder and projection head, and the NT-Xent loss built from the `2N x 2N` cosine
similarity matrix: self-similarity masked out with `torch.eye(2N).bool()` and
`masked_fill(-inf)` (and the other spelling, `sim[~mask].view(2N, -1)`), positives gathered
with `torch.diag` and `torch.cat`, cross-entropy against label 0. LARS-free: SGD with momentum
and a cosine schedule. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def augment(x):
    shift = torch.randint(-1, 2, (2,))
    x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
    flip = torch.rand(x.shape[0], 1, 1, 1) < 0.5
    x = torch.where(flip, torch.flip(x, dims=[3]), x)
    return x + 0.1 * torch.randn_like(x)


def nt_xent(z1, z2, temperature=0.5):
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = torch.mm(z, z.t()) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool)
    sim = sim.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def nt_xent_gathered(z1, z2, temperature=0.5):
    """The other common spelling: positives from the off-diagonals, negatives by masking."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2) / temperature
    positives = torch.cat([torch.diag(sim, n), torch.diag(sim, -n)]).reshape(2 * n, 1)
    mask = torch.ones(2 * n, 2 * n).fill_diagonal_(0).bool()
    for i in range(n):
        mask[i, n + i] = False
        mask[n + i, i] = False
    negatives = sim[mask].reshape(2 * n, -1)
    logits = torch.cat([positives, negatives], dim=1)
    labels = torch.zeros(2 * n, dtype=torch.long)
    return F.cross_entropy(logits, labels)


class SimCLR(nn.Module):
    def __init__(self, feat=16, proj=8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, feat, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, proj))

    def forward(self, x):
        return self.projector(self.encoder(x))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(8)
    images = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    data = torch.from_numpy(images)

    model = SimCLR()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)

    def train_step(x1, x2, gathered):
        optimizer.zero_grad()
        z1, z2 = model(x1), model(x2)
        loss = nt_xent_gathered(z1, z2) if gathered else nt_xent(z1, z2)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(2):
        for x in data.split(8):
            x1, x2 = augment(x), augment(x)
            losses.append(train_step(x1, x2, epoch == 1).item())
        scheduler.step()
    with torch.no_grad():
        z1, z2 = model(data[:8]), model(data[:8].flip(3))
        check = torch.stack([nt_xent(z1, z2), nt_xent_gathered(z1, z2)])
    values = {"head": model.projector[2].weight.detach().clone(),
              "bn_mean": model.encoder[1].running_mean.clone(), "both_losses": check}
    return {"losses": losses, "values": values, "initial_state": initial}
