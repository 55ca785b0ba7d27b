"""Polynomial fit, tensors only (tutorial "Learning PyTorch with Examples": manual gradients)."""
import math

import torch


def main(seed=0, compile=False, initial_state=None, steps=200):
    dtype = torch.float
    device = torch.device("cpu")
    torch.manual_seed(seed)
    x = torch.linspace(-math.pi, math.pi, 200, device=device, dtype=dtype)
    y = torch.sin(x)
    a = torch.randn((), device=device, dtype=dtype)
    b = torch.randn((), device=device, dtype=dtype)
    c = torch.randn((), device=device, dtype=dtype)
    d = torch.randn((), device=device, dtype=dtype)
    if initial_state is not None:
        a, b, c, d = (initial_state[k].clone() for k in "abcd")
    initial = {"a": a.clone(), "b": b.clone(), "c": c.clone(), "d": d.clone()}
    learning_rate = 1e-6

    def step(a, b, c, d):
        y_pred = a + b * x + c * x ** 2 + d * x ** 3
        loss = (y_pred - y).pow(2).sum()
        grad_y_pred = 2.0 * (y_pred - y)
        grad_a = grad_y_pred.sum()
        grad_b = (grad_y_pred * x).sum()
        grad_c = (grad_y_pred * x ** 2).sum()
        grad_d = (grad_y_pred * x ** 3).sum()
        a = a - learning_rate * grad_a
        b = b - learning_rate * grad_b
        c = c - learning_rate * grad_c
        d = d - learning_rate * grad_d
        return loss, a, b, c, d

    if compile:
        step = torch.compile(step)
    losses = []
    for t in range(steps):
        loss, a, b, c, d = step(a, b, c, d)
        if t % 20 == 19:
            losses.append(loss.item())
    return {"losses": losses, "initial_state": initial,
            "coefficients": [a.item(), b.item(), c.item(), d.item()]}


if __name__ == "__main__":
    print(main())
