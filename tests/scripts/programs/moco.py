"""MoCo v2 as facebookresearch/moco writes it, tiny and on one device: a query encoder and a
momentum key encoder (a deep copy, frozen) with MLP heads, the key encoder moved towards the
query encoder under no_grad by `param_k.data.mul_(m).add_(param_q.data, alpha=1 - m)`, shuffled
BatchNorm on one device (a `randperm` and its `argsort`), a queue of negatives in a
`register_buffer` dequeued and enqueued in place at the position a `queue_ptr` buffer holds,
InfoNCE logits by `einsum` and `F.cross_entropy` against zeros labels. SGD with momentum and
weight decay, a cosine lr schedule. The training step is the compiled function."""
import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Encoder(nn.Module):
    def __init__(self, dim=16, width=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # MoCo v2's MLP head replaces the fc
        self.fc = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.ReLU(),
                                nn.Linear(2 * width, dim))

    def forward(self, x):
        return self.fc(self.features(x))


class MoCo(nn.Module):
    def __init__(self, dim=16, K=32, m=0.99, T=0.2):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = Encoder(dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False
        self.register_buffer("queue", torch.randn(dim, K))
        self.queue = nn.functional.normalize(self.queue, dim=0)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.mul_(self.m).add_(param_q.data, alpha=1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % batch_size == 0
        self.queue[:, ptr:ptr + batch_size] = keys.T
        ptr = (ptr + batch_size) % self.K
        self.queue_ptr[0] = ptr

    @torch.no_grad()
    def _batch_shuffle_single_gpu(self, x):
        idx_shuffle = torch.randperm(x.shape[0], device=x.device)
        idx_unshuffle = torch.argsort(idx_shuffle)
        return x[idx_shuffle], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle_single_gpu(self, x, idx_unshuffle):
        return x[idx_unshuffle]

    def forward(self, im_q, im_k):
        q = self.encoder_q(im_q)
        q = nn.functional.normalize(q, dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            im_k, idx_unshuffle = self._batch_shuffle_single_gpu(im_k)
            k = self.encoder_k(im_k)
            k = nn.functional.normalize(k, dim=1)
            k = self._batch_unshuffle_single_gpu(k, idx_unshuffle)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1)
        logits /= self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels


def augment(x):
    n = x.size(0)
    flip = torch.rand(n, 1, 1, 1) < 0.5
    x = torch.where(flip, x.flip(-1), x)
    gray = torch.rand(n, 1, 1, 1) < 0.2
    x = torch.where(gray, x.mean(1, keepdim=True).expand_as(x), x)
    return x * (1.0 + 0.3 * (torch.rand(n, 3, 1, 1) - 0.5)) + 0.1 * torch.randn_like(x)


def accuracy(output, target):
    pred = output.argmax(1)
    return (pred == target).float().mean() * 100


def make_images(rng, n):
    labels = rng.integers(0, 4, n)
    yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    bases = np.stack([np.sin(xx), np.cos(yy), np.sin(xx + yy), np.cos(xx - yy)])
    images = bases[labels][:, None] * rng.uniform(0.5, 1.0, (n, 3, 1, 1))
    return torch.from_numpy((images + 0.2 * rng.standard_normal((n, 3, 8, 8))).astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    images = make_images(np.random.default_rng(7), 32)
    model = MoCo()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.CrossEntropyLoss()
    base_lr, epochs, iters = 0.06, 3, 4
    optimizer = torch.optim.SGD(model.parameters(), base_lr, momentum=0.9, weight_decay=1e-4)

    def train_step(images_q, images_k):
        output, target = model(im_q=images_q, im_k=images_k)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss, accuracy(output, target)

    if compile:
        train_step = torch.compile(train_step)
    model.train()
    losses, accs, ptrs, lrs = [], [], [], []
    for epoch in range(epochs):
        lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        lrs.append(lr)
        for i in range(iters):
            batch = images[i * 8:(i + 1) * 8]
            loss, acc1 = train_step(augment(batch), augment(batch))
            losses.append(loss.item())
            accs.append(acc1.item())
            ptrs.append(int(model.queue_ptr))

    values = {"queue": model.queue, "queue_norms": model.queue.norm(dim=0), "ptrs": str(ptrs),
              "accs": torch.tensor(accs), "key_w": model.encoder_k.fc[2].weight[:2],
              "key_running_mean": model.encoder_k.features[1].running_mean,
              "lrs": torch.tensor(lrs)}
    return {"losses": losses, "values": values, "initial_state": initial}
