"""A Vision Transformer from scratch, as the ViT tutorials and vit-pytorch write it without
einops: patches embedded by a `Conv2d` with stride = patch size (and, for a second model, cut
by `F.unfold` and projected by a Linear), `rearrange` done with `flatten`/`transpose` and
`reshape`/`permute`, a cls token `nn.Parameter(torch.zeros(1, 1, d))` expanded over the batch,
a learned position embedding with `trunc_normal_` init, pre-norm blocks with
`nn.MultiheadAttention` in one model and a hand-written attention calling
`F.scaled_dot_product_attention` in the other, stochastic depth (`drop_path` with a per-sample
Bernoulli mask), and an AdamW step with a cosine schedule. The first model's train step is
`torch.compile`d."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def drop_path(x, drop_prob: float = 0., training: bool = False):
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob=0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class PatchEmbedConv(nn.Module):
    def __init__(self, img_size=8, patch_size=4, in_chans=3, embed_dim=16):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)          # B, N, D


class PatchEmbedUnfold(nn.Module):
    def __init__(self, img_size=8, patch_size=4, in_chans=3, embed_dim=16):
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Linear(in_chans * patch_size * patch_size, embed_dim)

    def forward(self, x):
        patches = F.unfold(x, kernel_size=self.patch_size, stride=self.patch_size)
        return self.proj(patches.permute(0, 2, 1))


class Attention(nn.Module):
    def __init__(self, dim, num_heads=2, attn_drop=0.1):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(
            2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v,
                                           dropout_p=self.attn_drop if self.training else 0.)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=2.0, drop_path=0.1, use_mha=False):
        super().__init__()
        self.use_mha = use_mha
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if use_mha:
            self.attn = nn.MultiheadAttention(dim, num_heads, dropout=0.1, batch_first=True)
        else:
            self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(),
                                 nn.Dropout(0.1), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x):
        h = self.norm1(x)
        if self.use_mha:
            h = self.attn(h, h, h, need_weights=False)[0]
        else:
            h = self.attn(h)
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    def __init__(self, patch_embed, num_classes=4, embed_dim=16, depth=2, num_heads=2,
                 use_mha=False):
        super().__init__()
        self.patch_embed = patch_embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=0.1)
        dpr = [x.item() for x in torch.linspace(0, 0.2, depth)]
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, drop_path=dpr[i],
                                            use_mha=use_mha) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=.02)
        nn.init.trunc_normal_(self.cls_token, std=.02)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x):
        x = self.patch_embed(x)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(31)
    classes = rng.integers(0, 4, 64)
    images = 0.3 * rng.normal(size=(64, 3, 8, 8)).astype(np.float32)
    for i, c in enumerate(classes):
        images[i, c % 3, 4 * (c // 2):4 * (c // 2) + 4, 4 * (c % 2):4 * (c % 2) + 4] += 1.0
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(classes)
    models = {"conv_sdpa": VisionTransformer(PatchEmbedConv()),
              "unfold_mha": VisionTransformer(PatchEmbedUnfold(), use_mha=True)}
    if initial_state is not None:
        for name, model in models.items():
            model.load_state_dict(initial_state[name])
    initial = {name: {k: v.clone() for k, v in m.state_dict().items()}
               for name, m in models.items()}
    losses, values = [], {}
    for name, model in models.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12)
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

        def train_step(images, labels):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            return loss

        if compile and name == "conv_sdpa":     # (MultiheadAttention compiled: bert_finetune)
            train_step = torch.compile(train_step)
        model.train()
        for epoch in range(2):
            for i in range(0, 64, 16):
                losses.append(train_step(x_all[i:i + 16], y_all[i:i + 16]).item())
            scheduler.step()
        model.eval()
        with torch.no_grad():
            logits = model(x_all)
        values[f"{name}_acc"] = (logits.argmax(-1) == y_all).float().mean()
        values[f"{name}_logits"] = logits[:8]
        values[f"{name}_cls"] = model.cls_token.detach().clone()
    return {"losses": losses, "values": values, "initial_state": initial}
