"""A capsule network (Sabour et al.'s dynamic routing) as its PyTorch re-implementations write
it, on small synthetic digits: a convolution, primary capsules (a convolution reshaped into
8-D capsules and squashed), digit capsules predicted through a weight tensor by
`torch.matmul`, routing by agreement as a Python loop of softmax over the output capsules,
weighted sums, squash and agreement updates by `@`/`einsum`, the margin loss on capsule
lengths, and a reconstruction decoder fed the capsules masked by the target's one-hot (by the
longest capsule at test time) under a down-weighted MSE. Adam with ExponentialLR. The
training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def squash(s, dim=-1):
    squared_norm = (s ** 2).sum(dim=dim, keepdim=True)
    return squared_norm / (1 + squared_norm) * s / torch.sqrt(squared_norm + 1e-8)


class PrimaryCaps(nn.Module):
    def __init__(self, in_channels=16, num_capsules=4, capsule_dim=8, kernel_size=3, stride=2):
        super().__init__()
        self.capsule_dim = capsule_dim
        self.conv = nn.Conv2d(in_channels, num_capsules * capsule_dim, kernel_size, stride)

    def forward(self, x):
        out = self.conv(x)
        batch_size = out.size(0)
        out = out.view(batch_size, -1, self.capsule_dim, out.size(-2), out.size(-1))
        out = out.permute(0, 1, 3, 4, 2).contiguous().view(batch_size, -1, self.capsule_dim)
        return squash(out)


class DigitCaps(nn.Module):
    def __init__(self, num_routes, in_dim=8, num_capsules=4, out_dim=8, routing_iters=3):
        super().__init__()
        self.num_routes, self.num_capsules = num_routes, num_capsules
        self.routing_iters = routing_iters
        self.W = nn.Parameter(0.05 * torch.randn(1, num_routes, num_capsules, out_dim, in_dim))

    def forward(self, x):
        batch_size = x.size(0)
        # u_hat[b, i, j] = W[i, j] u[b, i]
        x = x[:, :, None, :, None]
        u_hat = torch.matmul(self.W, x).squeeze(-1)           # (B, routes, caps, out_dim)
        b_ij = torch.zeros(batch_size, self.num_routes, self.num_capsules, device=x.device)
        u_hat_detached = u_hat.detach()
        for iteration in range(self.routing_iters):
            c_ij = F.softmax(b_ij, dim=2)
            if iteration == self.routing_iters - 1:
                s_j = torch.einsum("bij,bijd->bjd", c_ij, u_hat)
                v_j = squash(s_j)
            else:
                # the intermediate iterations route on the detached predictions
                s_j = (c_ij.unsqueeze(-1) * u_hat_detached).sum(dim=1)
                v_j = squash(s_j)
                a_ij = u_hat_detached.unsqueeze(-2) @ v_j[:, None, :, :, None]
                b_ij = b_ij + a_ij.squeeze(-1).squeeze(-1)
        return v_j


class Decoder(nn.Module):
    def __init__(self, num_capsules=4, capsule_dim=8, image_size=12):
        super().__init__()
        self.image_size = image_size
        self.reconstruction_layers = nn.Sequential(
            nn.Linear(capsule_dim * num_capsules, 64), nn.ReLU(inplace=True),
            nn.Linear(64, 96), nn.ReLU(inplace=True),
            nn.Linear(96, image_size * image_size), nn.Sigmoid())

    def forward(self, x, target=None):
        classes = torch.sqrt((x ** 2).sum(2))
        if target is None:
            _, max_length_indices = classes.max(dim=1)
            masked = torch.eye(x.size(1), device=x.device).index_select(
                dim=0, index=max_length_indices)
        else:
            masked = F.one_hot(target, x.size(1)).float()
        t = (x * masked[:, :, None]).view(x.size(0), -1)
        reconstructions = self.reconstruction_layers(t)
        return reconstructions.view(-1, 1, self.image_size, self.image_size), masked


class CapsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, stride=1)    # 12 -> 10
        self.primary_capsules = PrimaryCaps()                    # 10 -> 4: 4*4*4 = 64 routes
        self.digit_capsules = DigitCaps(num_routes=64)
        self.decoder = Decoder()

    def forward(self, data, target=None):
        output = self.digit_capsules(self.primary_capsules(F.relu(self.conv1(data))))
        reconstructions, masked = self.decoder(output, target)
        return output, reconstructions, masked


def margin_loss(x, labels, m_plus=0.9, m_minus=0.1, lam=0.5):
    v_c = torch.sqrt((x ** 2).sum(dim=2))
    left = F.relu(m_plus - v_c).view(x.size(0), -1) ** 2
    right = F.relu(v_c - m_minus).view(x.size(0), -1) ** 2
    loss = labels * left + lam * (1.0 - labels) * right
    return loss.sum(dim=1).mean()


def capsule_loss(data, x, target, reconstructions):
    labels = F.one_hot(target, x.size(1)).float()
    recon = F.mse_loss(reconstructions.view(data.size(0), -1), data.view(data.size(0), -1),
                       reduction="sum") / data.size(0)
    return margin_loss(x, labels) + 0.0005 * recon


def make_digits(n, rng):
    """12x12 images of four shapes (a bar, a cross, a box, a diagonal), shifted and noised."""
    imgs, labels = np.zeros((n, 1, 12, 12), np.float32), rng.integers(0, 4, n)
    for i, c in enumerate(labels):
        g = np.zeros((8, 8), np.float32)
        if c == 0:
            g[:, 3:5] = 1
        elif c == 1:
            g[3:5, :] = 1
            g[:, 3:5] = 1
        elif c == 2:
            g[[0, 7], :] = 1
            g[:, [0, 7]] = 1
        else:
            g[np.arange(8), np.arange(8)] = 1
        dy, dx = rng.integers(0, 5, 2)
        imgs[i, 0, dy:dy + 8, dx:dx + 8] = g
    imgs += 0.05 * rng.standard_normal(imgs.shape).astype(np.float32)
    return torch.from_numpy(imgs.clip(0, 1)), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(12)
    images, targets = make_digits(64, rng)
    test_images, test_targets = make_digits(16, rng)
    model = CapsNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)

    def train_step(data, target):
        optimizer.zero_grad()
        output, reconstructions, masked = model(data, target)
        loss = capsule_loss(data, output, target, reconstructions)
        loss.backward()
        optimizer.step()
        return loss, output

    if compile:
        train_step = torch.compile(train_step)
    losses, correct = [], []
    model.train()
    for epoch in range(3):
        for i in range(0, 64, 16):
            loss, output = train_step(images[i:i + 16], targets[i:i + 16])
            losses.append(loss.item())
            pred = output.norm(dim=-1).argmax(dim=1)
            correct.append(int(pred.eq(targets[i:i + 16]).sum()))
        scheduler.step()

    model.eval()
    with torch.no_grad():
        output, reconstructions, masked = model(test_images)
    values = {"lengths": output.norm(dim=-1), "reconstructions": reconstructions,
              "masked": masked, "correct": str(correct)}
    return {"losses": losses, "values": values, "initial_state": initial}
