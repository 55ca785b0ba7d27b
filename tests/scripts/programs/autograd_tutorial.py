"""Autograd tutorial (autogradqs): w and b with requires_grad, binary_cross_entropy_with_logits,
grad_fn, backward, no_grad / detach, and accumulating gradients with retain_graph."""
import torch


def main(seed=0, compile=False, initial_state=None):
    x = torch.ones(5)
    y = torch.zeros(3)
    w = torch.linspace(-1, 1, 15).reshape(5, 3).requires_grad_(True)
    b = torch.tensor([0.1, -0.2, 0.3], requires_grad=True)
    z = torch.matmul(x, w) + b
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    values = {"loss": loss, "has_grad_fn": loss.grad_fn is not None}
    loss.backward()
    values["w_grad"] = w.grad
    values["b_grad"] = b.grad
    z = torch.matmul(x, w) + b
    values["z_requires_grad"] = z.requires_grad
    with torch.no_grad():
        z = torch.matmul(x, w) + b
    values["no_grad_requires_grad"] = z.requires_grad
    z = torch.matmul(x, w) + b
    z_det = z.detach()
    values["detach_requires_grad"] = z_det.requires_grad
    inp = torch.eye(4, 5, requires_grad=True)
    out = (inp + 1).pow(2).t()
    out.backward(torch.ones_like(out), retain_graph=True)
    values["first_call"] = inp.grad.clone()
    out.backward(torch.ones_like(out), retain_graph=True)
    values["second_call"] = inp.grad.clone()
    inp.grad.zero_()
    out.backward(torch.ones_like(out), retain_graph=True)
    values["after_zero"] = inp.grad.clone()
    return {"losses": [], "values": values}


if __name__ == "__main__":
    print(main())
