"""A DDPM training step as the diffusion tutorials and lucidrains-style repos write it: a linear
beta schedule from `torch.linspace`, `alphas_cumprod` gathered at random timesteps and shaped
with `[:, None, None, None]`, sinusoidal time embeddings, a tiny U-Net (GroupNorm, SiLU, a
strided-conv down path, `ConvTranspose2d` and `F.interpolate` up paths with `torch.cat` skips,
a self-attention block at the bottom), the noise-prediction MSE, an EMA copy of the weights
updated after each step, and the ancestral sampling loop under `no_grad` with the EMA model.
The training step (noise, timesteps, loss, backward, step) is the compiled function."""
import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SinusoidalPositionEmbeddings(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, time):
        half_dim = self.dim // 2
        embeddings = math.log(10000) / (half_dim - 1)
        embeddings = torch.exp(torch.arange(half_dim, device=time.device) * -embeddings)
        embeddings = time[:, None] * embeddings[None, :]
        return torch.cat((embeddings.sin(), embeddings.cos()), dim=-1)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, time_dim, groups=4):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_mlp = nn.Linear(time_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, t):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_mlp(F.silu(t))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    def __init__(self, dim, heads=2, dim_head=4):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden = heads * dim_head
        self.norm = nn.GroupNorm(1, dim)
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = map(lambda t: t.reshape(b, self.heads, -1, h * w), qkv)
        q = q * self.scale
        sim = torch.einsum("b h d i, b h d j -> b h i j", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b h i j, b h d j -> b h i d", attn, v)
        out = out.permute(0, 1, 3, 2).reshape(b, -1, h, w)
        return self.to_out(out) + x


class TinyUNet(nn.Module):
    def __init__(self, channels=1, dim=8, time_dim=16):
        super().__init__()
        self.time_mlp = nn.Sequential(SinusoidalPositionEmbeddings(dim), nn.Linear(dim, time_dim),
                                      nn.GELU(), nn.Linear(time_dim, time_dim))
        self.init_conv = nn.Conv2d(channels, dim, 3, padding=1)
        self.down1 = ResBlock(dim, dim, time_dim)
        self.downsample1 = nn.Conv2d(dim, dim, 4, stride=2, padding=1)        # 8 -> 4
        self.down2 = ResBlock(dim, 2 * dim, time_dim)
        self.downsample2 = nn.Conv2d(2 * dim, 2 * dim, 4, stride=2, padding=1)  # 4 -> 2
        self.mid_attn = Attention(2 * dim)
        self.upsample2 = nn.ConvTranspose2d(2 * dim, 2 * dim, 4, stride=2, padding=1)  # 2 -> 4
        self.up2 = ResBlock(4 * dim, dim, time_dim)
        self.up1 = ResBlock(2 * dim, dim, time_dim)
        self.final = nn.Conv2d(dim, channels, 1)

    def forward(self, x, time):
        t = self.time_mlp(time)
        x = self.init_conv(x)
        h1 = self.down1(x, t)
        h2 = self.down2(self.downsample1(h1), t)
        m = self.mid_attn(self.downsample2(h2))
        u = self.up2(torch.cat((self.upsample2(m), h2), dim=1), t)
        u = F.interpolate(u, scale_factor=2, mode="nearest")                 # 4 -> 8
        u = self.up1(torch.cat((u, h1), dim=1), t)
        return self.final(u)


def linear_beta_schedule(timesteps):
    return torch.linspace(1e-4, 0.2, timesteps)


def extract(a, t, x_shape):
    batch_size = t.shape[0]
    out = a.gather(-1, t.cpu())
    return out.reshape(batch_size, *((1,) * (len(x_shape) - 1))).to(t.device)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    timesteps = 20
    betas = linear_beta_schedule(timesteps)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
    sqrt_recip_alphas = torch.sqrt(1.0 / alphas)
    sqrt_alphas_cumprod = torch.sqrt(alphas_cumprod)
    sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - alphas_cumprod)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

    rng = np.random.default_rng(5)
    shapes = np.zeros((4, 1, 8, 8), dtype=np.float32)
    shapes[0, :, 2:6, 2:6] = 1
    shapes[1, :, :, 3:5] = 1
    shapes[2, :, 3:5, :] = 1
    shapes[3, :, np.arange(8), np.arange(8)] = 1
    data = torch.from_numpy(shapes[rng.integers(0, 4, 48)] * 2 - 1)

    model = TinyUNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    ema_decay = 0.9

    def train_step(x_start):
        t = torch.randint(0, timesteps, (x_start.shape[0],), device=x_start.device).long()
        noise = torch.randn_like(x_start)
        a = sqrt_alphas_cumprod[t][:, None, None, None]
        s = extract(sqrt_one_minus_alphas_cumprod, t, x_start.shape)
        x_noisy = a * x_start + s * noise
        predicted_noise = model(x_noisy, t)
        loss = F.mse_loss(noise, predicted_noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for ema_p, p in zip(ema_model.parameters(), model.parameters()):
                ema_p.mul_(ema_decay).add_(p.detach(), alpha=1 - ema_decay)
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(2):
        for batch in data.split(16):
            losses.append(train_step(batch).item())

    @torch.no_grad()
    def p_sample(model, x, t, t_index):
        betas_t = extract(betas, t, x.shape)
        sqrt_one_minus_t = extract(sqrt_one_minus_alphas_cumprod, t, x.shape)
        sqrt_recip_alphas_t = extract(sqrt_recip_alphas, t, x.shape)
        model_mean = sqrt_recip_alphas_t * (x - betas_t * model(x, t) / sqrt_one_minus_t)
        if t_index == 0:
            return model_mean
        posterior_variance_t = extract(posterior_variance, t, x.shape)
        noise = torch.randn_like(x)
        return model_mean + torch.sqrt(posterior_variance_t) * noise

    img = torch.randn((2, 1, 8, 8))
    for i in reversed(range(0, timesteps)):
        img = p_sample(ema_model, img, torch.full((2,), i, dtype=torch.long), i)
    values = {"final_conv": model.final.weight.detach().clone(),
              "ema_up": ema_model.upsample2.weight.detach().clone(),
              "ema_attn": ema_model.mid_attn.to_qkv.weight.detach().clone(),
              "sample": img.clamp(-1, 1)}
    return {"losses": losses, "values": values, "initial_state": initial}
