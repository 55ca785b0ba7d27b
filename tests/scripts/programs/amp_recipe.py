"""Automatic mixed precision in a training loop (the pattern of pytorch/tutorials'
recipes_source/recipes/amp_recipe.py): forward and loss under `torch.autocast(device_type,
dtype=torch.float16)`, `scaler.scale(loss).backward()`, gradients unscaled and clipped,
`scaler.step(opt)`, `scaler.update()`, `opt.zero_grad(set_to_none=True)`, and a checkpoint of
model, optimizer and scaler saved mid-training and loaded into fresh objects that carry on.
Written for the CPU with float16, the autocast dtype both libraries support there."""
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn

DEVICE = "cpu"
AMP_DTYPE = torch.float16


def build_net(in_features, hidden, out_features, depth):
    layers = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers).to(DEVICE)


def main(seed=0, compile=False, initial_state=None, epochs=3, batches=6, batch_size=32):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    in_features, hidden, out_features = 48, 96, 16
    inputs = [torch.from_numpy(rng.normal(size=(batch_size, in_features)).astype(np.float32))
              for _ in range(batches)]
    targets = [torch.from_numpy(rng.normal(size=(batch_size, out_features)).astype(np.float32))
               for _ in range(batches)]

    net = build_net(in_features, hidden, out_features, depth=3)
    if initial_state is not None:
        net.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    loss_fn = nn.MSELoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(DEVICE, init_scale=2.0 ** 12, growth_interval=4)

    def forward_loss(x, y):
        with torch.autocast(device_type=DEVICE, dtype=AMP_DTYPE):
            out = net(x)
            loss = loss_fn(out, y)
        return out, loss

    if compile:
        forward_loss = torch.compile(forward_loss)

    losses, dtypes, scales, grad_dtypes = [], set(), [], set()

    def train_epoch():
        for x, y in zip(inputs, targets):
            out, loss = forward_loss(x, y)
            # linear layers run in float16 under autocast; mse_loss autocasts to float32
            dtypes.add((str(out.dtype), str(loss.dtype)))
            scaler.scale(loss).backward()
            scaler.unscale_(opt)          # the true gradients, for clipping
            nn.utils.clip_grad_norm_(net.parameters(), max_norm=5.0)
            grad_dtypes.update(str(p.grad.dtype) for p in net.parameters())
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            scales.append(scaler.get_scale())

    for _ in range(epochs - 1):
        train_epoch()

    # checkpoint everything amp needs to resume, then resume into fresh objects
    checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict(),
                  "scaler": scaler.state_dict()}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "amp_checkpoint.pt")
        torch.save(checkpoint, path)
        restored = torch.load(path)
    net = build_net(in_features, hidden, out_features, depth=3)
    net.load_state_dict(restored["model"])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    opt.load_state_dict(restored["optimizer"])
    scaler = torch.amp.GradScaler(DEVICE)
    scaler.load_state_dict(restored["scaler"])
    train_epoch()

    return {"losses": losses, "initial_state": initial, "dtypes": sorted(dtypes),
            "scales": scales, "grad_dtypes": sorted(grad_dtypes)}


if __name__ == "__main__":
    print(main())
