"""Quick start: logistic regression with kiln's autograd, written as in PyTorch."""

import kiln as torch

torch.manual_seed(0)
n, d = 512, 8
true_w = torch.randn(d, 1)
x = torch.randn(n, d)
y = (x @ true_w > 0).float()

w = torch.zeros(d, 1, requires_grad=True)
b = torch.zeros(1, requires_grad=True)
for step in range(200):
    p = torch.sigmoid(x @ w + b)
    loss = -(y * torch.log(p + 1e-7) + (1 - y) * torch.log(1 - p + 1e-7)).mean()
    loss.backward()
    with torch.no_grad():
        w -= 0.5 * w.grad
        b -= 0.5 * b.grad
        w.grad.zero_()
        b.grad.zero_()
    if step % 50 == 0:
        print(f"step {step:3d}  loss {loss.item():.4f}")

accuracy = ((torch.sigmoid(x @ w + b) > 0.5).float() == y).float().mean().item()
print(f"final loss {loss.item():.4f}  train accuracy {accuracy:.3f}")
