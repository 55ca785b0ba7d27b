"""The performance tuning guide's CPU-side advice in one small CNN training script: gradients
cleared with `param.grad = None`, conv layers without bias before batch norm, a compiled
pointwise gelu, channels_last, activation checkpointing, debugging APIs switched off, a
pre-allocating max-length forward/backward before training, `no_grad` validation, then
inference through `torch.jit.enable_onednn_fusion(True)`, `torch.jit.trace` + `torch.jit.freeze`
with warm-up runs, and bfloat16 autocast after `torch.fx.experimental.optimization.fuse`.
`backend` compiles the gelu; a test may give the reference run a quicker one."""
import numpy as np
import torch
import torch.fx.experimental.optimization as optimization
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def gelu(x):
    return x * 0.5 * (1.0 + torch.erf(x / 1.41421))


class Net(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def block(self, x):
        return self.act(self.bn2(self.conv2(x)))

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        if self.training:
            x = checkpoint(self.block, x, use_reentrant=False)
        else:
            x = self.block(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main(seed=0, compile=False, initial_state=None, backend="inductor"):
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    torch.autograd.set_detect_anomaly(False)
    torch.autograd.profiler.profile(enabled=False)
    torch.autograd.profiler.emit_nvtx(enabled=False)

    fused_gelu = torch.compile(gelu, backend=backend)
    probe = torch.linspace(-3, 3, 13)
    values = {"compiled_gelu": fused_gelu(probe), "gelu_matches": bool(torch.allclose(
        fused_gelu(probe), F.gelu(probe), atol=1e-4))}
    model = Net(gelu).to(memory_format=torch.channels_last)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.normal(size=(5, 6, 3, 12, 12)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, size=(5, 6)))

    # preallocation: one forward and backward at the largest size, no step, gradients cleared
    model(torch.zeros(6, 3, 16, 16).to(memory_format=torch.channels_last)).sum().backward()
    for param in model.parameters():
        param.grad = None
    model.load_state_dict(initial)           # its batch-norm statistics forgotten too

    def train_step(x, y):
        for param in model.parameters():
            param.grad = None
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    model.train()
    for x, y in zip(images[:4], labels[:4]):
        losses.append(train_step(x.contiguous(memory_format=torch.channels_last), y).item())
    values["grads_none_before_step"] = all(p.grad is not None for p in model.parameters())

    model.eval()
    with torch.no_grad():
        values["eval"] = model(images[4])

    torch.jit.enable_onednn_fusion(True)
    sample_input = [images[4]]
    traced_model = torch.jit.trace(model, sample_input)
    traced_model = torch.jit.freeze(traced_model)
    with torch.no_grad():
        traced_model(*sample_input)
        traced_model(*sample_input)
        values["traced"] = traced_model(*sample_input)
    torch.jit.enable_onednn_fusion(False)

    with torch.no_grad(), torch.autocast("cpu", cache_enabled=False, dtype=torch.bfloat16):
        fused = optimization.fuse(model)
        values["fused_has_bn"] = any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        out = fused(images[4])
        values["bf16_dtype"] = str(out.dtype).split(".")[-1]
        values["bf16"] = out.float()
    return {"losses": losses, "values": values, "initial_state": initial}
