"""Two models and two optimizers in compiled steps. Teacher-student distillation: the teacher
is pretrained briefly, then put in eval with `requires_grad_(False)`; one compiled step trains
the student on a KL-divergence to the teacher's softened outputs plus the hard-label loss. A
GAN-style alternation: one compiled step updates the discriminator on real and detached fake
samples, the next updates the generator through the discriminator (whose grads it zeroes)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    teacher, student = mlp(6, 24, 3), mlp(6, 8, 3)
    gen, disc = mlp(2, 12, 4), mlp(4, 12, 1)
    nets = {"teacher": teacher, "student": student, "gen": gen, "disc": disc}
    if initial_state is not None:
        for name, net in nets.items():
            net.load_state_dict(initial_state[name])
    initial = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in nets.items()}
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.normal(size=(64, 6)).astype(np.float32))
    y = torch.from_numpy((x.numpy() @ rng.normal(size=(6, 3))).argmax(1))
    real = torch.from_numpy((rng.normal(size=(64, 4)) * 0.5 + 1.0).astype(np.float32))
    noise = torch.from_numpy(rng.normal(size=(64, 2)).astype(np.float32))

    t_opt = torch.optim.SGD(teacher.parameters(), lr=0.1)
    for _ in range(10):
        t_opt.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        t_opt.step()
    teacher.eval()
    teacher.requires_grad_(False)
    s_opt = torch.optim.Adam(student.parameters(), lr=0.02)
    T, alpha = 2.0, 0.7

    def distill_step(inputs, labels):
        s_opt.zero_grad()
        with torch.no_grad():
            soft_targets = F.softmax(teacher(inputs) / T, dim=-1)
        student_logits = student(inputs)
        soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1), soft_targets,
                        reduction="batchmean") * (T * T)
        loss = alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)
        loss.backward()
        s_opt.step()
        return loss

    g_opt = torch.optim.Adam(gen.parameters(), lr=0.01, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(disc.parameters(), lr=0.01, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()

    def d_step(real_batch, z):
        d_opt.zero_grad()
        fake = gen(z).detach()
        ones = torch.ones(real_batch.size(0), 1)
        zeros = torch.zeros(z.size(0), 1)
        loss = criterion(disc(real_batch), ones) + criterion(disc(fake), zeros)
        loss.backward()
        d_opt.step()
        return loss

    def g_step(z):
        g_opt.zero_grad()
        loss = criterion(disc(gen(z)), torch.ones(z.size(0), 1))
        loss.backward()
        g_opt.step()
        disc.zero_grad()
        return loss

    if compile:
        distill_step, d_step, g_step = map(torch.compile, (distill_step, d_step, g_step))
    losses = []
    for epoch in range(3):
        for i in range(0, 64, 16):
            losses.append(distill_step(x[i:i + 16], y[i:i + 16]).item())
            losses.append(d_step(real[i:i + 16], noise[i:i + 16]).item())
            losses.append(g_step(noise[i:i + 16]).item())
    values = {f"{n}_{k}": v.detach().clone() for n, m in nets.items()
              for k, v in m.state_dict().items()}
    values["teacher_grads_none"] = all(p.grad is None for p in teacher.parameters())
    values["disc_grads_none"] = all(p.grad is None for p in disc.parameters())
    return {"losses": losses, "values": values, "initial_state": initial}
