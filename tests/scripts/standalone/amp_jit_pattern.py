"""A training script in the pattern of pytorch/examples (word_language_model's mixed-precision
step, cpp/transfer-learning's convert.py), run unmodified by `python script.py` (PyTorch) and by
`python -m kiln run script.py` (kiln): the older `torch.cuda.amp` spellings of GradScaler and
autocast, `from torch import Tensor` with `Tensor | None` annotations, a training loop that logs
with `.item()`, then `torch.jit.trace` + `save` and `torch.jit.load` of the saved model, whose
outputs are compared with the model's. The data are synthetic, so it needs no download."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.cuda.amp import GradScaler, autocast


class Net(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x: Tensor, scale: torch.Tensor | None = None) -> Tensor:
        h = F.gelu(self.norm(self.fc1(x)))
        if scale is not None:
            h = h * scale
        return F.log_softmax(self.fc2(h), dim=1)


def synthetic(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, 8, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def main():
    parser = argparse.ArgumentParser(description="AMP + TorchScript export pattern")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="net_traced.pt")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    data = torch.Generator().manual_seed(args.seed)
    x, y = synthetic(256, data)
    model = Net(args.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = GradScaler(enabled=use_cuda)
    for epoch in range(1, args.epochs + 1):
        for start in range(0, len(x), 64):
            xb, yb = x[start:start + 64].to(device), y[start:start + 64].to(device)
            optimizer.zero_grad()
            with autocast(enabled=use_cuda):
                loss = F.nll_loss(model(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        print(f"Epoch {epoch} Loss: {loss.item():.6f}")

    model.eval()
    example = torch.rand(4, 8).to(device)
    traced = torch.jit.trace(model, example)
    traced.save(args.out)
    loaded = torch.jit.load(args.out)
    test_x, _ = synthetic(32, data)
    with torch.no_grad():
        diff = (loaded(test_x.to(device)).cpu() - model(test_x.to(device)).cpu()).abs().max()
    print(f"Loaded model max difference: {diff.item():.3e}")
    print(f"CUDA {torch.version.cuda} devices {torch.cuda.device_count()} "
          f"allocated {torch.cuda.memory_allocated()}")


if __name__ == "__main__":
    main()
