"""Polynomial fit with autograd (tutorial: requires_grad, backward, no_grad update)."""
import math

import torch


def main(seed=0, compile=False, initial_state=None, steps=200):
    dtype = torch.float
    torch.manual_seed(seed)
    x = torch.linspace(-math.pi, math.pi, 200, dtype=dtype)
    y = torch.sin(x)
    a = torch.randn((), dtype=dtype, requires_grad=True)
    b = torch.randn((), dtype=dtype, requires_grad=True)
    c = torch.randn((), dtype=dtype, requires_grad=True)
    d = torch.randn((), dtype=dtype, requires_grad=True)
    if initial_state is not None:
        with torch.no_grad():
            for p, k in zip((a, b, c, d), "abcd"):
                p.copy_(initial_state[k])
    initial = {k: p.detach().clone() for k, p in zip("abcd", (a, b, c, d))}
    learning_rate = 1e-6

    losses = []
    for t in range(steps):
        y_pred = a + b * x + c * x ** 2 + d * x ** 3
        loss = (y_pred - y).pow(2).sum()
        if t % 20 == 19:
            losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            a -= learning_rate * a.grad
            b -= learning_rate * b.grad
            c -= learning_rate * c.grad
            d -= learning_rate * d.grad
            a.grad = None
            b.grad = None
            c.grad = None
            d.grad = None
    return {"losses": losses, "initial_state": initial}


if __name__ == "__main__":
    print(main())
