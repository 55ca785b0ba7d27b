"""An accelerate / Hugging Face style training loop: gradient accumulation (the loss divided by
the accumulation steps, the optimizer stepped every k micro-batches), `clip_grad_norm_` before
each step, a linear warmup then cosine decay through `LambdaLR`, `zero_grad(set_to_none=True)`
and the loss logged with `.item()` every n optimizer steps. The micro-batch forward/backward is
the compiled function, as `accelerator.accumulate` users write it."""
import math

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class TinyLM(nn.Module):
    def __init__(self, vocab=20, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids, labels=None):
        h = self.norm(self.embed(ids))
        h = h + torch.tanh(self.proj(h))
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
        return {"loss": loss, "logits": logits}


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps):
    def lr_lambda(current_step):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        progress = float(current_step - num_warmup_steps) / float(
            max(1, num_training_steps - num_warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 20, size=(64, 6))
    labels = (ids + 1) % 20
    loader = DataLoader(TensorDataset(torch.from_numpy(ids), torch.from_numpy(labels)),
                        batch_size=8)
    model = TinyLM()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    accum, epochs, log_every = 4, 3, 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2, betas=(0.9, 0.95), eps=1e-8)
    total_steps = epochs * len(loader) // accum
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, 2, total_steps)

    def micro_step(batch):
        outputs = model(batch["input_ids"], labels=batch["labels"])
        loss = outputs["loss"] / accum
        loss.backward()
        return loss

    if compile:
        micro_step = torch.compile(micro_step)
    losses, logged, norms, lrs = [], [], [], []
    completed = 0
    model.train()
    for epoch in range(epochs):
        for step, (x, y) in enumerate(loader):
            loss = micro_step({"input_ids": x, "labels": y})
            losses.append(loss.item() * accum)
            if (step + 1) % accum == 0:
                norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                completed += 1
                lrs.append(lr_scheduler.get_last_lr()[0])
                if completed % log_every == 0:
                    logged.append(loss.item())
    values = {"final_head": model.head.weight.detach().clone(),
              "final_embed": model.embed.weight.detach().clone(),
              "grad_norms": torch.tensor(norms), "lrs": torch.tensor(lrs),
              "logged": torch.tensor(logged),
              "grads_none": all(p.grad is None for p in model.parameters())}
    return {"losses": losses, "values": values, "initial_state": initial}
