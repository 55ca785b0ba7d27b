"""ConvNeXt blocks as facebookresearch/ConvNeXt and timm write them: a stem Conv2d(k=4,
stride=4) with a channels-first LayerNorm (mean and variance over dim 1 by hand), blocks of a
7x7 depthwise Conv2d, `permute` to channels-last for `nn.LayerNorm` and the pointwise MLP
(`nn.Linear`, GELU), a layer-scale `gamma` parameter, `permute` back, and stochastic depth
(DropPath: one `x.new_empty(shape).bernoulli_(keep)` per sample, `div_(keep)`), a downsampling
layer between stages; `trunc_normal_` init, AdamW with parameter groups that keep norms, biases
and gammas out of weight decay, `CosineAnnealingLR` stepped every iteration, `clip_grad_norm_`,
and the grad norm it returns recorded. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class LayerNorm(nn.Module):
    """LayerNorm over channels for channels_first (N, C, H, W) inputs."""

    def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps, self.data_format = eps, data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Block(nn.Module):
    def __init__(self, dim, drop_path=0.0, layer_scale_init_value=1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones((dim,)),
                                  requires_grad=True) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)                  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)                  # (N, H, W, C) -> (N, C, H, W)
        return shortcut + self.drop_path(x)


class ConvNeXt(nn.Module):
    def __init__(self, in_chans=3, num_classes=5, depths=(2, 2), dims=(16, 32),
                 drop_path_rate=0.3, layer_scale_init_value=0.1):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
            LayerNorm(dims[0], eps=1e-6, data_format="channels_first")))
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList()
        dp_rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        cur = 0
        for i in range(len(dims)):
            self.stages.append(nn.Sequential(*[Block(dims[i], dp_rates[cur + j],
                                                     layer_scale_init_value)
                                               for j in range(depths[i])]))
            cur += depths[i]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.constant_(m.bias, 0)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean([-2, -1])))


def param_groups_weight_decay(model, weight_decay=1e-5, no_weight_decay_list=()):
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


def make_images(rng, n):
    labels = rng.integers(0, 5, n)
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    freq = (labels + 1)[:, None, None] * 0.15
    base = np.sin(freq * xx[None]) * np.cos(freq * yy[None])
    images = base[:, None] * np.array([1.0, 0.5, -0.5])[None, :, None, None]
    images = images + 0.4 * rng.standard_normal((n, 3, 32, 32))
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(8)
    images, labels = make_images(rng, 40)
    model = ConvNeXt()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    groups = param_groups_weight_decay(model, weight_decay=0.05)
    optimizer = torch.optim.AdamW(groups, lr=4e-3, betas=(0.9, 0.999))
    epochs, steps_per_epoch = 3, 5
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * steps_per_epoch, eta_min=1e-5)

    def train_step(x, y):
        output = model(x)
        loss = F.cross_entropy(output, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        return loss, grad_norm

    if compile:
        train_step = torch.compile(train_step)
    losses, norms, lrs = [], [], []
    for epoch in range(epochs):
        model.train()
        for x, y in zip(images.split(8), labels.split(8)):
            loss, grad_norm = train_step(x, y)
            scheduler.step()
            losses.append(loss.item())
            norms.append(grad_norm.item())
            lrs.append(optimizer.param_groups[0]["lr"])

    model.eval()
    with torch.no_grad():
        logits = model(images[:8])
    values = {"logits": logits, "grad_norms": torch.tensor(norms), "lrs": torch.tensor(lrs),
              "gamma": model.stages[1][1].gamma,
              "group_sizes": f"{len(groups[0]['params'])}/{len(groups[1]['params'])}"}
    return {"losses": losses, "values": values, "initial_state": initial}
