"""A Perceiver-style classifier as the lucidrains/perceiver-pytorch and Perceiver IO
reimplementations write it: a learned latent array (`nn.Parameter` initialized by
`nn.init.trunc_normal_`) reads a long, padded input (Fourier position features appended:
`torch.linspace` bands, sin and cos of `pi`-scaled positions) through
`nn.MultiheadAttention(batch_first=True, kdim=, vdim=, dropout=)` with a `key_padding_mask`
marking the padding, then latent self-attention blocks whose heads are split by
`view`/`transpose` and computed by hand with `torch.einsum`, pre-norm residuals with GELU MLPs,
a mean over the latents into a linear head; AdamW with decoupled weight decay on the matrices
only and a linear warmup by `LambdaLR` stepped per batch. The training step is the compiled
function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def fourier_encode(x, max_freq, num_bands):
    x = x.unsqueeze(-1)
    scales = torch.linspace(1.0, max_freq / 2, num_bands, dtype=x.dtype)
    x = x * scales * math.pi
    return torch.cat([x.sin(), x.cos()], dim=-1)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=2, dropout=0.1):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class LatentAttention(nn.Module):
    def __init__(self, dim, heads=4, dim_head=8):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        sim = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        attn = sim.softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, v)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class Perceiver(nn.Module):
    def __init__(self, input_dim, num_classes, num_latents=8, latent_dim=32, depth=2, heads=4,
                 num_bands=4, max_freq=10.0):
        super().__init__()
        self.num_bands, self.max_freq = num_bands, max_freq
        input_dim = input_dim + 2 * num_bands + 1
        self.latents = nn.Parameter(torch.empty(num_latents, latent_dim))
        self.input_norm = nn.LayerNorm(input_dim)
        self.latent_norm = nn.LayerNorm(latent_dim)
        self.cross_attn = nn.MultiheadAttention(latent_dim, num_heads=1, kdim=input_dim,
                                                vdim=input_dim, dropout=0.1,
                                                batch_first=True)
        self.cross_ff = FeedForward(latent_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([LatentAttention(latent_dim, heads=heads), FeedForward(latent_dim)])
            for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, num_classes))
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.latents, std=0.02, a=-2.0, b=2.0)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, data, mask):
        b, n = data.shape[:2]
        pos = torch.linspace(-1.0, 1.0, n)
        enc = fourier_encode(pos, self.max_freq, self.num_bands)
        enc = torch.cat([pos[:, None], enc], dim=-1).expand(b, -1, -1)
        data = torch.cat([data, enc], dim=-1)
        x = self.latents.unsqueeze(0).expand(b, -1, -1)
        context = self.input_norm(data)
        attended, weights = self.cross_attn(self.latent_norm(x), context, context,
                                            key_padding_mask=~mask, need_weights=True)
        x = x + attended
        x = x + self.cross_ff(x)
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.head(x.mean(dim=1)), weights


def make_data(rng, n, max_len=24, dim=6):
    lengths = rng.integers(6, max_len + 1, n)
    data = np.zeros((n, max_len, dim), np.float32)
    mask = np.zeros((n, max_len), bool)
    labels = np.zeros(n, np.int64)
    for i, length in enumerate(lengths):
        data[i, :length] = rng.standard_normal((length, dim))
        mask[i, :length] = True
        # the class is which of three features has the largest mean over the real positions
        labels[i] = np.argmax(data[i, :length, :3].mean(0))
    return torch.from_numpy(data), torch.from_numpy(mask), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(5)
    data, mask, labels = make_data(rng, 96)
    model = Perceiver(input_dim=6, num_classes=3)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "latents"]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "latents"]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=2e-3, betas=(0.9, 0.98))
    warmup = 6
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup))

    def train_step(x, m, y):
        logits, _ = model(x, m)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, lrs = [], []
    batch = 16
    for epoch in range(2):
        for i in range(0, data.shape[0], batch):
            losses.append(train_step(data[i:i + batch], mask[i:i + batch],
                                     labels[i:i + batch]).item())
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])

    model.eval()
    with torch.no_grad():
        logits, weights = model(data[:16], mask[:16])
        # the padding gets no attention, whatever is stored there
        garbage = data[:16].masked_fill(~mask[:16, :, None], 7.0)
        logits_garbage, _ = model(garbage, mask[:16])
        accuracy = (logits.argmax(-1) == labels[:16]).float().mean().item()
    values = {"logits": logits, "pad_weight": weights.masked_select(~mask[:16, None, :]).sum(),
              "padding_ignored": bool(torch.allclose(logits, logits_garbage, atol=1e-5)),
              "accuracy": accuracy, "lrs": torch.tensor(lrs),
              "latents": model.latents.detach().clone(),
              "latent_range": bool(model.latents.abs().max() < 1.0)}
    return {"losses": losses, "values": values, "initial_state": initial}
