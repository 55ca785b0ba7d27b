"""MobileNetV2 as torchvision and the pytorch/vision classification reference write it, tiny:
inverted residual blocks (a 1x1 expansion, a 3x3 depthwise conv by `groups=hidden_dim`, a
linear 1x1 projection, the residual only where stride is 1 and the widths agree), ConvBNReLU6
layers, `_make_divisible` widths, kaiming fan_out init. Trained with
`CrossEntropyLoss(label_smoothing=0.1)` and SGD with nesterov momentum, weight decay only on the
weights of convs and linears (two parameter groups, norms and biases without), `OneCycleLR`
stepped per batch; then a second short run with `CosineAnnealingWarmRestarts` stepped by a
fractional epoch (`epoch + i / iters`, as its docs show). The training step is the compiled
function."""
import numpy as np
import torch
import torch.nn as nn


def _make_divisible(v, divisor, min_value=None):
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))
        layers.extend([
            ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=5, width_mult=0.25, round_nearest=8):
        super().__init__()
        input_channel, last_channel = 32, 64
        inverted_residual_setting = [
            # t, c, n, s
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 2, 2],
        ]
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features = [ConvBNReLU(3, input_channel, stride=2)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride,
                                                 expand_ratio=t))
                input_channel = output_channel
        features.append(ConvBNReLU(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel,
                                                                   num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def set_weight_decay(model, weight_decay, norm_weight_decay=0.0):
    norm_classes = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    params = {"other": [], "norm": []}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, norm_classes) or name == "bias":
                params["norm"].append(p)
            else:
                params["other"].append(p)
    return [{"params": params["other"], "weight_decay": weight_decay},
            {"params": params["norm"], "weight_decay": norm_weight_decay}]


def make_data(rng, n):
    labels = rng.integers(0, 5, n)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    angle = labels[:, None, None] * np.pi / 5
    stripes = np.sin(4 * (np.cos(angle) * xx + np.sin(angle) * yy))
    images = stripes[:, None] * rng.uniform(0.5, 1.0, (n, 3, 1, 1))
    images = images + 0.3 * rng.standard_normal((n, 3, 16, 16))
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    images, labels = make_data(np.random.default_rng(13), 48)
    model = MobileNetV2()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    groups = set_weight_decay(model, 4e-5)
    optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)
    epochs, iters = 2, 3
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2,
                                                    total_steps=epochs * iters)

    def train_step(x, y):
        output = model(x)
        loss = criterion(output, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    model.train()
    losses, lrs = [], []
    for epoch in range(epochs):
        for i in range(iters):
            x, y = images[i * 16:(i + 1) * 16], labels[i * 16:(i + 1) * 16]
            losses.append(train_step(x, y).item())
            lrs.append(scheduler.get_last_lr()[0])
            scheduler.step()

    # a second short run: warm restarts, stepped by a fractional epoch within each epoch
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = 0.05
    restarts = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=1, T_mult=2,
                                                                     eta_min=1e-3)
    for epoch in range(2):
        for i in range(iters):
            x, y = images[i * 16:(i + 1) * 16], labels[i * 16:(i + 1) * 16]
            losses.append(train_step(x, y).item())
            lrs.append(optimizer.param_groups[0]["lr"])
            restarts.step(epoch + i / iters)

    model.eval()
    with torch.no_grad():
        logits = model(images)
        accuracy = (logits.argmax(1) == labels).float().mean()
    values = {"lrs": torch.tensor(lrs), "group_sizes": "/".join(
                  str(len(g["params"])) for g in optimizer.param_groups),
              "logits": logits[:4], "accuracy": accuracy,
              "depthwise_groups": model.features[1].conv[0][0].groups,
              "running_var": model.features[2].conv[1][1].running_var}
    return {"losses": losses, "values": values, "initial_state": initial}
