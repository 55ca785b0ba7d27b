"""BYOL as lucidrains/byol-pytorch and solo-learn write it: two augmented views (flips, noise,
per-sample colour scaling as tensor ops), an online encoder + projector + predictor (MLPs with
BatchNorm1d) and a target encoder + projector (a deep copy, frozen), the symmetric loss
`2 - 2 * cosine similarity` of L2-normalised predictions against the detached target
projections, SGD with nesterov momentum, and after each step the target moved towards the online
network with a cosine momentum schedule: the encoder by `torch._foreach_mul_` /
`torch._foreach_add_(..., alpha=1 - m)`, the projector by `p_t.data.lerp_(p_o.data, 1 - m)`, the
BatchNorm buffers copied. SimSiam's loss (negative cosine against `z.detach()`) is evaluated on
the trained networks. The training step, given each step's momentum as a Python float, is the
compiled function."""
import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(dim, hidden, out):
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


class Encoder(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                 nn.ReLU(inplace=True), nn.Conv2d(width, 2 * width, 3, stride=2,
                                                                  padding=1),
                                 nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = 2 * width

    def forward(self, x):
        return self.net(x)


def augment(x):
    n = x.size(0)
    flip = torch.rand(n, 1, 1, 1) < 0.5
    x = torch.where(flip, x.flip(-1), x)
    colour = 1.0 + 0.4 * (torch.rand(n, 3, 1, 1) - 0.5)
    return x * colour + 0.1 * torch.randn_like(x)


def byol_loss(p, z):
    p = F.normalize(p, dim=-1, p=2)
    z = F.normalize(z, dim=-1, p=2)
    return 2 - 2 * (p * z).sum(dim=-1)


def simsiam_loss(p, z):
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


class BYOL(nn.Module):
    def __init__(self, proj_dim=16, hidden=32):
        super().__init__()
        self.online_encoder = Encoder()
        self.online_projector = mlp(self.online_encoder.out_dim, hidden, proj_dim)
        self.predictor = mlp(proj_dim, hidden, proj_dim)
        self.target_encoder = copy.deepcopy(self.online_encoder)
        self.target_projector = copy.deepcopy(self.online_projector)
        for p in list(self.target_encoder.parameters()) + list(self.target_projector.parameters()):
            p.requires_grad = False

    def forward(self, view1, view2):
        online1 = self.predictor(self.online_projector(self.online_encoder(view1)))
        online2 = self.predictor(self.online_projector(self.online_encoder(view2)))
        with torch.no_grad():
            target1 = self.target_projector(self.target_encoder(view1))
            target2 = self.target_projector(self.target_encoder(view2))
        loss = byol_loss(online1, target2.detach()) + byol_loss(online2, target1.detach())
        return loss.mean()

    @torch.no_grad()
    def update_target(self, m):
        online = list(self.online_encoder.parameters())
        target = list(self.target_encoder.parameters())
        torch._foreach_mul_(target, m)
        torch._foreach_add_(target, online, alpha=1 - m)
        for p_o, p_t in zip(self.online_projector.parameters(), self.target_projector.parameters()):
            p_t.data.lerp_(p_o.data, 1 - m)
        for b_o, b_t in zip(self.online_encoder.buffers(), self.target_encoder.buffers()):
            b_t.copy_(b_o)


def make_images(rng, n):
    labels = rng.integers(0, 4, n)
    yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    bases = np.stack([np.sin(xx), np.cos(yy), np.sin(xx + yy), np.cos(xx - yy)])
    images = bases[labels][:, None] * rng.uniform(0.5, 1.0, (n, 3, 1, 1))
    images = images + 0.2 * rng.standard_normal((n, 3, 8, 8))
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(3)
    images, labels = make_images(rng, 64)
    model = BYOL()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    online = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(online, lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-4)
    base_m, total = 0.9, 16

    def train_step(x, m):
        loss = model(augment(x), augment(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_target(m)
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, momenta = [], []
    model.train()
    for step in range(total):
        m = 1 - (1 - base_m) * (math.cos(math.pi * step / total) + 1) / 2
        batch = images[(step % 4) * 16:(step % 4) * 16 + 16]
        losses.append(train_step(batch, m).item())
        momenta.append(m)

    model.eval()
    with torch.no_grad():
        z = model.online_projector(model.online_encoder(images))
        p = model.predictor(z)
        simsiam = simsiam_loss(p, z)
        features = F.normalize(model.target_encoder(images), dim=-1)
        # a collapsed representation has no spread across the batch
        spread = features.std(0).mean()
    values = {"simsiam": simsiam, "spread": spread,
              "target_w": model.target_encoder.net[0].weight[:2],
              "target_proj": model.target_projector[3].bias,
              "running_var": model.target_encoder.net[1].running_var,
              "momenta": torch.tensor(momenta)}
    return {"losses": losses, "values": values, "initial_state": initial}
