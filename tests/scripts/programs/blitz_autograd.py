"""60-minute blitz, autograd: gradients of Q = 3a^3 - b^2 with an external gradient,
vector-Jacobian products, requires_grad propagation, no_grad, freezing parameters."""
import torch
from torch import nn, optim


def main(seed=0, compile=False, initial_state=None):
    values = {}
    a = torch.tensor([2., 3.], requires_grad=True)
    b = torch.tensor([6., 4.], requires_grad=True)
    Q = 3 * a ** 3 - b ** 2
    external_grad = torch.tensor([1., 1.])
    Q.backward(gradient=external_grad)
    values["a_grad"] = a.grad
    values["b_grad"] = b.grad
    values["check_a"] = bool((9 * a ** 2 == a.grad).all())
    values["check_b"] = bool((-2 * b == b.grad).all())
    x = torch.linspace(-1, 1, 25).reshape(5, 5)
    y = torch.linspace(0, 2, 25).reshape(5, 5)
    z = torch.linspace(1, 3, 25).reshape(5, 5).requires_grad_()
    a = x + y
    values["a_requires_grad"] = a.requires_grad
    b = x + z
    values["b_requires_grad"] = b.requires_grad
    with torch.no_grad():
        c = z * 2
    values["c_requires_grad"] = c.requires_grad
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    for param in model.parameters():
        param.requires_grad = False
    model[2] = nn.Linear(3, 10)
    optimizer = optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    values["trainable"] = ",".join(trainable)
    values["param_count"] = sum(p.numel() for p in model.parameters())
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    out = (w @ w).tanh().sum()
    (grad_w,) = torch.autograd.grad(out, w)
    values["autograd_grad"] = grad_w
    v = torch.tensor([1.0, 2.0], requires_grad=True)
    u = v * v
    u.retain_grad()
    (u * torch.tensor([3.0, 4.0])).sum().backward()
    values["retained_grad"] = u.grad
    values["leaf_grad"] = v.grad
    return {"losses": [], "values": values, "groups": len(optimizer.param_groups)}


if __name__ == "__main__":
    print(main())
