"""A physics-informed neural network for the viscous Burgers equation u_t + u u_x = nu u_xx on
x in [-1, 1], t in [0, 1], as the PINN papers' code writes it: an MLP u(x, t) with tanh
activations and Xavier-initialized weights, collocation points whose `requires_grad_()` lets
`torch.autograd.grad(..., create_graph=True)` give u_t, u_x and then u_xx, a loss that adds the
PDE residual to the initial (u = -sin(pi x)) and boundary (u = 0) conditions, Adam first, then
`torch.optim.LBFGS` with a closure and `line_search_fn="strong_wolfe"`. The Adam step and the
LBFGS closure are the compiled functions. In float64, as PINN code often runs (L-BFGS's
curvature pairs are differences of nearly equal gradients, which float32 rounding swamps)."""
import math

import numpy as np
import torch
import torch.nn as nn


class PINN(nn.Module):
    def __init__(self, layers=(2, 20, 20, 20, 1)):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:]))
        for linear in self.linears:
            nn.init.xavier_normal_(linear.weight, gain=1.0)
            nn.init.zeros_(linear.bias)

    def forward(self, x, t):
        h = torch.cat([x, t], dim=1)
        for linear in self.linears[:-1]:
            h = torch.tanh(linear(h))
        return self.linears[-1](h)


def residual(model, x, t, nu):
    u = model(x, t)
    u_t, u_x = torch.autograd.grad(u, [t, x], grad_outputs=torch.ones_like(u),
                                   create_graph=True)
    u_xx = torch.autograd.grad(u_x, x, grad_outputs=torch.ones_like(u_x), create_graph=True)[0]
    return u_t + u * u_x - nu * u_xx


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(21)
    nu = 0.01 / math.pi
    n_f, n_b = 128, 32

    def column(values):
        return torch.from_numpy(np.asarray(values, dtype=np.float64).reshape(-1, 1))

    x_f = column(rng.uniform(-1, 1, n_f)).requires_grad_()
    t_f = column(rng.uniform(0, 1, n_f)).requires_grad_()
    x_0 = column(rng.uniform(-1, 1, n_b))
    t_0 = torch.zeros_like(x_0)
    u_0 = -torch.sin(math.pi * x_0)
    t_b = column(rng.uniform(0, 1, n_b))
    x_b = column(np.where(np.arange(n_b) % 2 == 0, -1.0, 1.0))
    u_b = torch.zeros_like(x_b)

    model = PINN().double()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    mse = nn.MSELoss()

    def pinn_loss():
        f = residual(model, x_f, t_f, nu)
        loss_f = torch.mean(f ** 2)
        loss_u = mse(model(x_0, t_0), u_0) + mse(model(x_b, t_b), u_b)
        return loss_f + loss_u

    adam = torch.optim.Adam(model.parameters(), lr=1e-2)

    def adam_step():
        adam.zero_grad()
        loss = pinn_loss()
        loss.backward()
        adam.step()
        return loss

    lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=6, history_size=10,
                              tolerance_grad=1e-9, tolerance_change=1e-12,
                              line_search_fn="strong_wolfe")
    evaluations = []

    def closure():
        lbfgs.zero_grad()
        loss = pinn_loss()
        loss.backward()
        return loss

    if compile:
        adam_step = torch.compile(adam_step)
        closure = torch.compile(closure)

    def counted_closure():
        loss = closure()
        evaluations.append(loss.item())
        return loss

    losses = []
    for it in range(12):
        losses.append(adam_step().item())
    for it in range(3):
        losses.append(lbfgs.step(counted_closure).item())

    x_test = torch.linspace(-1, 1, 9, dtype=torch.float64).reshape(-1, 1)
    t_test = torch.full_like(x_test, 0.5)
    with torch.no_grad():
        u_test = model(x_test, t_test)
    state = lbfgs.state[lbfgs._params[0]]
    values = {"u_test": u_test, "evaluations": evaluations,
              "n_evals": int(state["func_evals"]), "n_iter": int(state["n_iter"]),
              "w_last": model.linears[-1].weight.detach().clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
