"""Optimizer step in backward tutorial: one Adam per parameter, stepped and zeroed by a
register_post_accumulate_grad_hook as soon as that parameter's gradient is complete, so the
training loop only calls loss.backward(); a weight-tied pair and a plain loop for comparison,
and torch.autograd.graph.saved_tensors_hooks / save_on_cpu around the forward."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(10, 24)
        self.blocks = nn.Sequential(nn.Linear(24, 24), nn.GELU(), nn.LayerNorm(24),
                                    nn.Linear(24, 24), nn.GELU())
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(64, 10)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 5, 64))
    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    reference = Net()
    reference.load_state_dict(model.state_dict())

    optimizer_dict = {p: torch.optim.Adam([p], lr=3e-3, foreach=False)
                      for p in model.parameters()}

    def optimizer_hook(parameter) -> None:
        optimizer_dict[parameter].step()
        optimizer_dict[parameter].zero_grad()

    handles = [p.register_post_accumulate_grad_hook(optimizer_hook)
               for p in model.parameters()]
    packed = []

    def pack_hook(t):
        packed.append(tuple(t.shape))
        return t

    def unpack_hook(t):
        return t

    losses = []
    for epoch in range(3):
        for i in range(0, 64, 16):
            if i == 0:
                with torch.autograd.graph.saved_tensors_hooks(pack_hook, unpack_hook):
                    loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
            elif i == 16:
                with torch.autograd.graph.save_on_cpu():
                    loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
            else:
                loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
            loss.backward()
            losses.append(loss.item())
    for h in handles:
        h.remove()
    grads_cleared = all(p.grad is None for p in model.parameters())

    # the same training with one optimizer stepped after backward
    ref_opt = torch.optim.Adam(reference.parameters(), lr=3e-3, foreach=False)
    ref_losses = []
    for epoch in range(3):
        for i in range(0, 64, 16):
            ref_opt.zero_grad()
            loss = F.cross_entropy(reference(x[i:i + 16]), y[i:i + 16])
            loss.backward()
            ref_opt.step()
            ref_losses.append(loss.item())
    values = {"grads_cleared": grads_cleared, "saved_packed": len(packed) > 0,
              "same_as_plain_loop": bool(np.allclose(losses, ref_losses, rtol=1e-5)),
              "head_weight": model.head.weight}
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
