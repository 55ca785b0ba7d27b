"""A masked autoencoder as facebookresearch/mae writes it, tiny: images cut into patches, random
masking per sample by `torch.rand` noise, `argsort` (ids_shuffle, ids_restore) and `gather` of
the kept tokens, a ViT-ish encoder (cls token, pre-norm blocks) on the visible tokens only, a
lighter decoder that appends a learned mask token `expand`ed to the masked count and unshuffles
by `gather` with ids_restore, and the normalised-pixel loss on masked patches only. AdamW with
no weight decay on biases, norms and tokens, its lr set by hand each step (linear warmup, then
a half-cycle cosine, as MAE's lr_sched does). The training step is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaskedAutoencoder(nn.Module):
    def __init__(self, img_size=8, patch_size=2, in_chans=3, embed_dim=16, depth=2,
                 num_heads=2, decoder_dim=12, decoder_depth=1, norm_pix_loss=True):
        super().__init__()
        self.patch_size = patch_size
        num_patches = (img_size // patch_size) ** 2
        patch_dim = patch_size ** 2 * in_chans
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList([Block(decoder_dim, num_heads)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_dim)
        self.norm_pix_loss = norm_pix_loss
        self.initialize_weights()

    def initialize_weights(self):
        torch.nn.init.normal_(self.pos_embed, std=0.02)
        torch.nn.init.normal_(self.decoder_pos_embed, std=0.02)
        torch.nn.init.normal_(self.cls_token, std=0.02)
        torch.nn.init.normal_(self.mask_token, std=0.02)
        w = self.patch_embed.weight.data
        torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def patchify(self, imgs):
        p = self.patch_size
        h = w = imgs.shape[2] // p
        x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
        x = torch.einsum('nchpwq->nhwpqc', x)
        return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * 3))

    def unpatchify(self, x):
        p = self.patch_size
        h = w = int(x.shape[1] ** .5)
        x = x.reshape(shape=(x.shape[0], h, w, p, p, 3))
        x = torch.einsum('nhwpqc->nchpwq', x)
        return x.reshape(shape=(x.shape[0], 3, h * p, h * p))

    def random_masking(self, x, mask_ratio):
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x, mask_ratio):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        cls_tokens = cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        n_masked = ids_restore.shape[1] + 1 - x.shape[1]
        mask_tokens = self.mask_token.expand(x.shape[0], n_masked, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:, :]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.e-6) ** .5
        loss = (pred - target) ** 2
        loss = loss.mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio=0.75):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


def param_groups_weight_decay(model, weight_decay):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in ("cls_token", "mask_token",
                                                                  "pos_embed",
                                                                  "decoder_pos_embed"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def adjust_learning_rate(optimizer, epoch, lr, min_lr, warmup_epochs, epochs):
    if epoch < warmup_epochs:
        new_lr = lr * epoch / warmup_epochs
    else:
        new_lr = min_lr + (lr - min_lr) * 0.5 * (
            1. + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
    for param_group in optimizer.param_groups:
        param_group["lr"] = new_lr
    return new_lr


def make_images(rng, n):
    yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    freq = rng.uniform(0.3, 1.2, (n, 3, 1, 1))
    phase = rng.uniform(0, np.pi, (n, 3, 1, 1))
    images = np.sin(freq * xx + phase) * np.cos(freq * yy)
    return torch.from_numpy(images.astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    images = make_images(np.random.default_rng(5), 32)
    model = MaskedAutoencoder()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    groups = param_groups_weight_decay(model, 0.05)
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))

    def train_step(samples):
        loss, _, _ = model(samples, mask_ratio=0.75)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    model.train()
    losses, lrs = [], []
    epochs, iters = 4, 4
    for epoch in range(epochs):
        for it in range(iters):
            lrs.append(adjust_learning_rate(optimizer, it / iters + epoch, 2e-3, 1e-4, 1, epochs))
            batch = images[it * 8:(it + 1) * 8]
            losses.append(train_step(batch).item())

    model.eval()
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        loss, pred, mask = model(images[:4], mask_ratio=0.5)
        recon = model.unpatchify(pred)
    values = {"eval_loss": loss, "recon": recon[:, 0, :2], "mask": mask,
              "masked_count": int(mask.sum().item()), "lrs": torch.tensor(lrs),
              "roundtrip": (model.unpatchify(model.patchify(images[:2])) - images[:2]).abs().max()}
    return {"losses": losses, "values": values, "initial_state": initial}
