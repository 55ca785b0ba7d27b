"""FixMatch semi-supervised learning as kekmodel/FixMatch-pytorch and TorchSSL write it: a
labelled batch and an unlabelled batch seen through a weak augmentation (random flips and
per-sample shifts written as tensor ops) and a strong one (the weak one, then per-sample
brightness/contrast jitter and a random Cutout square), the three batches through the model in
one forward and split back by `chunk`, pseudo labels by `torch.max(probs, dim=-1)` over the weak
view's detached softmax, a confidence mask `max_probs.ge(threshold).float()`, the unlabelled loss
`(F.cross_entropy(logits_u_s, targets_u, reduction="none") * mask).mean()`, SGD with nesterov
momentum and no weight decay on biases and norms, a cosine `LambdaLR`, and a hand-written EMA of
the weights and BatchNorm buffers (kekmodel's `ModelEMA`) next to an
`torch.optim.swa_utils.AveragedModel` with a custom `avg_fn` that must agree with it. The
training step (augmentations, losses, step, EMA) is the compiled function."""
import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel


def weak_augment(x):
    n = x.size(0)
    flip = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
    x = torch.where(flip, x.flip(3), x)
    shifted = torch.roll(x, shifts=(1, 1), dims=(2, 3))
    move = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
    return torch.where(move, shifted, x)


def strong_augment(x, cutout=5):
    n, _, h, w = x.shape
    x = weak_augment(x)
    brightness = 1.0 + (torch.rand(n, 1, 1, 1, device=x.device) - 0.5) * 0.8
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, device=x.device) - 0.5) * 0.8
    x = (x * brightness - mean) * contrast + mean
    cy = torch.randint(0, h, (n, 1, 1), device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    box = ((ys - cy).abs() <= cutout // 2) & ((xs - cx).abs() <= cutout // 2)
    return x.masked_fill(box.unsqueeze(1), 0.5)


class ConvNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, momentum=0.001),
            nn.LeakyReLU(0.1, inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32, momentum=0.001),
            nn.LeakyReLU(0.1, inplace=True), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class ModelEMA:
    def __init__(self, model, decay):
        self.ema = copy.deepcopy(model)
        self.ema.eval()
        self.decay = decay
        self.param_keys = [k for k, _ in self.ema.named_parameters()]
        self.buffer_keys = [k for k, _ in self.ema.named_buffers()]
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, model):
        with torch.no_grad():
            msd = model.state_dict()
            esd = self.ema.state_dict()
            for k in self.param_keys:
                model_v = msd[k].detach()
                ema_v = esd[k]
                esd[k].copy_(ema_v * self.decay + (1.0 - self.decay) * model_v)
            for k in self.buffer_keys:
                esd[k].copy_(msd[k])


def make_data(rng, n):
    labels = rng.integers(0, 3, n)
    yy, xx = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    shapes = np.stack([(np.abs(xx - 6) < 3) & (np.abs(yy - 6) < 3),
                       np.abs(xx - yy) < 2, (xx // 3 + yy // 3) % 2 == 0]).astype(np.float64)
    colors = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0]])
    images = shapes[labels][:, None] * colors[labels][:, :, None, None]
    images = images + 0.25 * rng.standard_normal((n, 3, 12, 12))
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(21)
    labelled_x, labelled_y = make_data(rng, 24)
    unlabelled_x, unlabelled_y = make_data(rng, 96)
    model = ConvNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    no_decay = ["bias", "bn"]
    grouped = [
        {"params": [p for n, p in model.named_parameters()
                    if not any(nd in n for nd in no_decay) and p.ndim > 1], "weight_decay": 5e-4},
        {"params": [p for n, p in model.named_parameters()
                    if any(nd in n for nd in no_decay) or p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(grouped, lr=0.03, momentum=0.9, nesterov=True)
    total_steps, threshold, lambda_u, T = 12, 0.7, 1.0, 1.0

    def cosine(step, num_cycles=7.0 / 16.0):
        return max(0.0, math.cos(math.pi * num_cycles * step / total_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    ema = ModelEMA(model, decay=0.9)
    averaged = AveragedModel(model, avg_fn=lambda avg, p, n: 0.9 * avg + 0.1 * p,
                             use_buffers=False)

    def train_step(inputs_x, targets_x, inputs_u):
        batch_size = inputs_x.shape[0]
        inputs = torch.cat((weak_augment(inputs_x), weak_augment(inputs_u),
                            strong_augment(inputs_u)))
        logits = model(inputs)
        logits_x = logits[:batch_size]
        logits_u_w, logits_u_s = logits[batch_size:].chunk(2)
        Lx = F.cross_entropy(logits_x, targets_x, reduction="mean")
        pseudo_label = torch.softmax(logits_u_w.detach() / T, dim=-1)
        max_probs, targets_u = torch.max(pseudo_label, dim=-1)
        mask = max_probs.ge(threshold).float()
        Lu = (F.cross_entropy(logits_u_s, targets_u, reduction="none") * mask).mean()
        loss = Lx + lambda_u * Lu
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
        averaged.update_parameters(model)
        return loss, Lx.detach(), Lu.detach(), mask.mean()

    if compile:
        train_step = torch.compile(train_step)
    losses, mask_rates = [], []
    model.train()
    for step in range(total_steps):
        i = step % 3
        loss, lx, lu, rate = train_step(labelled_x[8 * i:8 * i + 8], labelled_y[8 * i:8 * i + 8],
                                        unlabelled_x[32 * (step % 3):32 * (step % 3) + 32])
        scheduler.step()
        losses.append(loss.item())
        mask_rates.append(rate.item())

    with torch.no_grad():
        ema_logits = ema.ema(unlabelled_x)
        accuracy = (ema_logits.argmax(1) == unlabelled_y).float().mean()
        ema_weight = ema.ema.fc.weight.clone()
    # AveragedModel copies the weights at its first update; ModelEMA started from the initial
    # weights: after twelve updates at 0.9 they differ by 0.9**12 of that first step
    values = {"mask_rates": torch.tensor(mask_rates), "ema_logits": ema_logits[:6],
              "accuracy": accuracy, "ema_fc": ema_weight,
              "averaged_fc": averaged.module.fc.weight.detach().clone(),
              "n_averaged": averaged.n_averaged.clone(),
              "running_mean": ema.ema.features[1].running_mean}
    return {"losses": losses, "values": values, "initial_state": initial}
