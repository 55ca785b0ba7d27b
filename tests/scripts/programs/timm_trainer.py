"""A timm-style image-classification trainer (train.py's habits): parameters split into
weight-decay and no-weight-decay groups (biases and norms by `p.ndim <= 1`, names listed by
the model's `no_weight_decay()`), AdamW, a linear warmup then cosine decay computed by hand and
written into every `param_group` per step, mixup or cutmix per batch (lambda from
`np.random.beta`, as timm draws it) with smoothed one-hot targets and
`SoftTargetCrossEntropy`, a label-smoothing `CrossEntropyLoss` for validation, the forward and
loss under `torch.autocast("cpu", dtype=torch.bfloat16)`, a model EMA (timm's ModelEmaV2)
updated after each step, and a checkpoint dict (model, optimizer, EMA, epoch) saved with
`torch.save` and resumed into fresh objects. The forward/backward/step is compiled."""
import copy
import io
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvNet(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pos_bias = nn.Parameter(torch.zeros(1, 16, 1, 1))
        self.head = nn.Linear(16, num_classes)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_bias"}

    def forward(self, x):
        x = F.relu(self.bn1(self.stem(x)))
        x = F.relu(self.bn2(self.conv(x)) + self.pos_bias)
        return self.head(x.mean((2, 3)))


def param_groups_weight_decay(model, weight_decay=1e-5, no_weight_decay_list=()):
    no_weight_decay_list = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


class ModelEmaV2(nn.Module):
    def __init__(self, model, decay=0.9):
        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.decay = decay

    def _update(self, model, update_fn):
        with torch.no_grad():
            for ema_v, model_v in zip(self.module.state_dict().values(),
                                      model.state_dict().values()):
                ema_v.copy_(update_fn(ema_v, model_v))

    def update(self, model):
        self._update(model, update_fn=lambda e, m: self.decay * e + (1. - self.decay) * m)


class SoftTargetCrossEntropy(nn.Module):
    def forward(self, x, target):
        loss = torch.sum(-target * F.log_softmax(x, dim=-1), dim=-1)
        return loss.mean()


def one_hot(x, num_classes, on_value=1., off_value=0.):
    x = x.long().view(-1, 1)
    return torch.full((x.size()[0], num_classes), off_value, device=x.device).scatter_(
        1, x, on_value)


def mixup_target(target, num_classes, lam=1., smoothing=0.0):
    off_value = smoothing / num_classes
    on_value = 1. - smoothing + off_value
    y1 = one_hot(target, num_classes, on_value=on_value, off_value=off_value)
    y2 = one_hot(target.flip(0), num_classes, on_value=on_value, off_value=off_value)
    return y1 * lam + y2 * (1. - lam)


def rand_bbox(img_shape, lam, rng):
    ratio = np.sqrt(1 - lam)
    img_h, img_w = img_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    cy, cx = rng.integers(0, img_h), rng.integers(0, img_w)
    yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h)
    xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w)
    return yl, yh, xl, xh


class Mixup:
    """timm's batch-mode Mixup/CutMix: mixup and cutmix on alternate batches, lambda from
    `np.random.beta` (for cutmix corrected to the box's area)."""

    def __init__(self, alpha=0.8, cutmix_alpha=1.0, smoothing=0.1, num_classes=4, seed=0):
        self.alpha, self.cutmix_alpha = alpha, cutmix_alpha
        self.smoothing, self.num_classes = smoothing, num_classes
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def __call__(self, x, target):
        self.calls += 1
        if self.calls % 2:
            lam = float(self.rng.beta(self.alpha, self.alpha))
            x_flipped = x.flip(0).mul_(1. - lam)
            x.mul_(lam).add_(x_flipped)
        else:
            lam = float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            yl, yh, xl, xh = rand_bbox(x.shape, lam, self.rng)
            x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
            lam = 1. - (yh - yl) * (xh - xl) / float(x.shape[-2] * x.shape[-1])
        return x, mixup_target(target, self.num_classes, lam, self.smoothing)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(21)
    classes = rng.integers(0, 4, 96)
    images = 0.3 * rng.normal(size=(96, 3, 8, 8)).astype(np.float32)
    for i, c in enumerate(classes):
        images[i, c % 3, :, 4 * (c // 3):4 * (c // 3) + 4] += 1.0
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(classes)

    model = ConvNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    groups = param_groups_weight_decay(model, 0.05, model.no_weight_decay())
    optimizer = torch.optim.AdamW(groups, lr=5e-3)
    model_ema = ModelEmaV2(model, decay=0.8)
    mixup_fn = Mixup(seed=seed)
    train_loss_fn = SoftTargetCrossEntropy()
    validate_loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    base_lr, warmup_steps, epochs, batch = 5e-3, 3, 4, 16
    steps_per_epoch = 64 // batch
    total = epochs * steps_per_epoch

    def lr_at(step):
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        t = (step - warmup_steps) / (total - warmup_steps)
        return 1e-5 + 0.5 * (base_lr - 1e-5) * (1 + math.cos(math.pi * t))

    def train_step(input, target):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(input)
            loss = train_loss_fn(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model_ema.update(model)
        return loss

    if compile:
        train_step = torch.compile(train_step)

    def run_epochs(first, last, log):
        for epoch in range(first, last):
            model.train()
            for i in range(steps_per_epoch):
                step = epoch * steps_per_epoch + i
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr_at(step)
                input = x_all[i * batch:(i + 1) * batch].clone()
                target = y_all[i * batch:(i + 1) * batch]
                input, target = mixup_fn(input, target)
                log.append(train_step(input, target).item())

    losses = []
    run_epochs(0, 2, losses)
    buffer = io.BytesIO()
    torch.save({"epoch": 2, "arch": "convnet", "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "state_dict_ema": model_ema.state_dict(),
                "mixup_calls": mixup_fn.calls}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    # resume into fresh objects, as `--resume` does
    model = ConvNet()
    model.load_state_dict(checkpoint["state_dict"])
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05,
                                                            model.no_weight_decay()), lr=5e-3)
    optimizer.load_state_dict(checkpoint["optimizer"])
    model_ema = ModelEmaV2(model, decay=0.8)
    model_ema.load_state_dict(checkpoint["state_dict_ema"])
    run_epochs(checkpoint["epoch"], epochs, losses)

    x_val, y_val = x_all[64:], y_all[64:]
    with torch.no_grad():
        val_loss = validate_loss_fn(model(x_val), y_val)
        model_ema.module.eval()
        ema_logits = model_ema.module(x_val)
        ema_acc = (ema_logits.argmax(-1) == y_val).float().mean()
    values = {"val_loss": val_loss, "ema_acc": ema_acc, "ema_logits": ema_logits,
              "head": model.head.weight.detach().clone(),
              "ema_running_mean": model_ema.module.bn2.running_mean.clone(),
              "lr_last": torch.tensor(optimizer.param_groups[0]["lr"]),
              "weight_decays": ",".join(str(g["weight_decay"]) for g in optimizer.param_groups),
              "group_sizes": ",".join(str(len(g["params"])) for g in optimizer.param_groups)}
    return {"losses": losses, "values": values, "initial_state": initial}
