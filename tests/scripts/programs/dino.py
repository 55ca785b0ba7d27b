"""DINO self-distillation as facebookresearch/dino writes it, tiny: a student and an EMA teacher
(the same backbone and DINOHead: an MLP with GELU, an L2-normalised bottleneck and a
`weight_norm` last layer whose norm is frozen), a MultiCropWrapper that runs each run of
same-sized crops (found by `unique_consecutive(return_counts=True)` and `cumsum`) through the
backbone in one batch, multi-crop views (2 global + 2 smaller local crops, resized by
`F.interpolate`), DINOLoss with a `center` buffer updated by an EMA of the teacher's batch mean
and a teacher temperature warmed up by a schedule, the student's last layer kept from learning
in the first epoch (its `p.grad = None`), `clip_grad_norm_`, AdamW with lr and weight decay set
from cosine schedules each iteration, and the teacher's EMA by a momentum schedule. The
training step, given the crops, the epoch and the schedules' values, is the compiled function."""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Backbone(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = 2 * width

    def forward(self, x):
        return self.net(x)


class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim, norm_last_layer=True, hidden_dim=32, bottleneck_dim=16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.apply(self._init_weights)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        if not isinstance(x, list):
            x = [x]
        idx_crops = torch.cumsum(torch.unique_consecutive(
            torch.tensor([inp.shape[-1] for inp in x]),
            return_counts=True,
        )[1], 0)
        start_idx, output = 0, torch.empty(0).to(x[0].device)
        for end_idx in idx_crops:
            _out = self.backbone(torch.cat(x[start_idx: end_idx]))
            output = torch.cat((output, _out))
            start_idx = end_idx
        return self.head(output)


class DINOLoss(nn.Module):
    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp,
                 warmup_teacher_temp_epochs, nepochs, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp))

    def forward(self, student_output, teacher_output, epoch):
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)
        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        batch_center = batch_center / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (
            1 - self.center_momentum)


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def get_params_groups(model):
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.}]


def cancel_gradients_last_layer(epoch, model, freeze_last_layer):
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


def multi_crop(images, generator_offsets):
    """Two 10x10 global crops resized to 8x8 and two 6x6 local crops resized to 4x4, at offsets
    drawn outside the step (as the data loader's RandomResizedCrop does)."""
    crops = []
    for k, (size, out) in enumerate([(10, 8), (10, 8), (6, 4), (6, 4)]):
        i, j = generator_offsets[k]
        crop = images[:, :, i:i + size, j:j + size]
        crops.append(F.interpolate(crop, size=(out, out), mode="bilinear", align_corners=False))
    return crops


def make_images(rng, n):
    yy, xx = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    freq = rng.uniform(0.3, 1.0, (n, 1, 1, 1))
    images = np.sin(freq * xx + rng.uniform(0, 3, (n, 3, 1, 1))) * np.cos(freq * yy)
    return torch.from_numpy((images + 0.1 * rng.standard_normal((n, 3, 12, 12)))
                            .astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(17)
    images = make_images(rng, 24)
    out_dim, epochs, iters = 32, 2, 3
    student = MultiCropWrapper(Backbone(), DINOHead(16, out_dim))
    teacher = MultiCropWrapper(Backbone(), DINOHead(16, out_dim))
    if initial_state is not None:
        student.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    dino_loss = DINOLoss(out_dim, 4, warmup_teacher_temp=0.04, teacher_temp=0.07,
                         warmup_teacher_temp_epochs=2, nepochs=epochs)
    optimizer = torch.optim.AdamW(get_params_groups(student))
    lr_schedule = cosine_scheduler(5e-3, 1e-4, epochs, iters, warmup_epochs=1)
    wd_schedule = cosine_scheduler(0.04, 0.4, epochs, iters)
    momentum_schedule = cosine_scheduler(0.99, 1, epochs, iters)

    def train_step(crops, epoch, m):
        teacher_output = teacher(crops[:2])
        student_output = student(crops)
        loss = dino_loss(student_output, teacher_output, epoch)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        cancel_gradients_last_layer(epoch, student, 1)
        optimizer.step()
        with torch.no_grad():
            for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(epochs):
        for i in range(iters):
            it = iters * epoch + i
            for j, param_group in enumerate(optimizer.param_groups):
                param_group["lr"] = lr_schedule[it]
                if j == 0:
                    param_group["weight_decay"] = wd_schedule[it]
            offsets = rng.integers(0, 3, (4, 2)).tolist()
            crops = multi_crop(images[i * 8:(i + 1) * 8], offsets)
            losses.append(train_step(crops, epoch, float(momentum_schedule[it])).item())

    with torch.no_grad():
        probs = F.softmax(teacher(images[:8, :, 1:11, 1:11]) / 0.07, dim=-1)
    values = {"center": dino_loss.center, "teacher_w": teacher.head.mlp[0].weight[:2],
              "last_layer_v": student.head.last_layer.weight_v[:2],
              "weight_g": student.head.last_layer.weight_g[:4],
              "entropy": -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()}
    return {"losses": losses, "values": values, "initial_state": initial}
