"""U-Net segmentation as milesial/Pytorch-UNet and the segmentation tutorials write it: a
`DoubleConv` (conv-BN-ReLU twice, no conv bias), `Down` (max-pool then DoubleConv), `Up` either
by `ConvTranspose2d` or by `nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)`
with `F.pad` to the skip's size before `torch.cat([x2, x1], dim=1)`, a 1x1 output conv, and
the loss BCE-with-logits plus a soft Dice loss on `sigmoid` outputs; RMSprop with momentum and
weight decay, `clip_grad_norm_`, a `ReduceLROnPlateau` on the validation Dice score, and
`F.interpolate(mode="bilinear", align_corners=False)` to score at a larger size. Both U-Nets
train; the training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels, bilinear=True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, n_channels=1, n_classes=1, bilinear=False, base=4):
        super().__init__()
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, base)
        self.down1 = Down(base, base * 2)
        self.down2 = Down(base * 2, base * 4 // factor)
        self.up1 = Up(base * 4, base * 2 // factor, bilinear)
        self.up2 = Up(base * 2, base, bilinear)
        self.outc = nn.Conv2d(base, n_classes, kernel_size=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x = self.up1(x3, x2)
        x = self.up2(x, x1)
        return self.outc(x)


def dice_coeff(input, target, epsilon=1e-6):
    inter = 2 * (input * target).sum(dim=(-1, -2))
    sets_sum = input.sum(dim=(-1, -2)) + target.sum(dim=(-1, -2))
    sets_sum = torch.where(sets_sum == 0, inter, sets_sum)
    return ((inter + epsilon) / (sets_sum + epsilon)).mean()


def shapes(rng, n, size=16):
    """Images of a bright disc or square on noise, and their masks."""
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        cy, cx = rng.integers(4, size - 4, 2)
        r = rng.integers(2, 5)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        images.append(mask * 1.0 + 0.3 * rng.standard_normal((size, size)))
        masks.append(mask)
    x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    return x, torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(12)
    x_train, y_train = shapes(rng, 16)
    x_val, y_val = shapes(rng, 8)
    models = {"transposed": UNet(bilinear=False), "bilinear": UNet(bilinear=True)}
    if initial_state is not None:
        for name, model in models.items():
            model.load_state_dict(initial_state[name])
    initial = {name: {k: v.clone() for k, v in m.state_dict().items()}
               for name, m in models.items()}
    criterion = nn.BCEWithLogitsLoss()
    losses, values = [], {}
    for name, model in models.items():
        optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, weight_decay=1e-8,
                                        momentum=0.9)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", patience=0,
                                                               factor=0.5)

        def train_step(images, true_masks):
            masks_pred = model(images)
            loss = criterion(masks_pred, true_masks)
            loss = loss + (1 - dice_coeff(torch.sigmoid(masks_pred), true_masks))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return loss

        if compile:
            train_step = torch.compile(train_step)
        for epoch in range(3):
            model.train()
            for images, true_masks in zip(x_train.split(8), y_train.split(8)):
                losses.append(train_step(images, true_masks).item())
            model.eval()
            with torch.no_grad():
                probs = torch.sigmoid(model(x_val))
                score = dice_coeff((probs > 0.5).float(), y_val)
            scheduler.step(score)
        with torch.no_grad():
            big = F.interpolate(model(x_val), scale_factor=2, mode="bilinear",
                                align_corners=False)
            big_masks = F.interpolate(y_val, scale_factor=2, mode="nearest")
        values[f"{name}_dice"] = score
        values[f"{name}_big_dice"] = dice_coeff((torch.sigmoid(big) > 0.5).float(), big_masks)
        values[f"{name}_lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
        values[f"{name}_logits"] = big[0, 0, ::5, ::5]
    return {"losses": losses, "values": values, "initial_state": initial}
