"""Full-batch fitting with `torch.optim.LBFGS` as the PyTorch forums and the scientific-ML
tutorials write it: a closure that zero-grads, computes the loss, calls `backward()` and returns
the loss, handed to `optimizer.step(closure)`; a small tanh MLP in float64 (`.double()`, as
scientific fits run L-BFGS) regressing a 1-D curve with `line_search_fn="strong_wolfe"`, and a
logistic regression (`nn.Linear` with `F.binary_cross_entropy_with_logits` plus an L2 term) in
float32 with the fixed-step update (lr=0.5, no line search). Every closure evaluation's loss is
recorded, the line search's trial points included, so the two runs must take the same path. With
`compile`, the closure's body (the model's loss, a function of no arguments) is the compiled
function; backward and the optimizer stay eager. With `compile_closure` too, the whole closure
(zero_grad, loss, backward) is compiled instead."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def regression_data(generator):
    x = torch.linspace(-2, 2, 48, dtype=torch.float64).unsqueeze(1)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return x, torch.sin(2 * x) + 0.3 * x + 0.05 * noise


def classification_data(generator):
    x = torch.randn(64, 5, generator=generator)
    w = torch.tensor([1.5, -2.0, 0.5, 0.0, 1.0])
    logits = x @ w + 0.3
    y = (torch.rand(64, generator=generator) < torch.sigmoid(logits)).float()
    return x, y


def fit(loss_fn, optimizer, n_steps, losses, compile_closure=False):
    """L-BFGS steps; each returns the loss at its starting point (the closure's first call)."""
    step_losses = []

    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    if compile_closure:
        closure = torch.compile(closure)

    def recorded():
        loss = closure()
        losses.append(loss.item())
        return loss

    for _ in range(n_steps):
        step_losses.append(optimizer.step(recorded).item())
    return step_losses


def main(seed=0, compile=False, initial_state=None, compile_closure=False):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(7)
    xr, yr = regression_data(generator)
    xc, yc = classification_data(generator)
    mlp = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                        nn.Linear(16, 1)).double()
    logistic = nn.Linear(5, 1)
    if initial_state is not None:
        mlp.load_state_dict(initial_state["mlp"])
        logistic.load_state_dict(initial_state["logistic"])
    initial = {"mlp": {k: v.clone() for k, v in mlp.state_dict().items()},
               "logistic": {k: v.clone() for k, v in logistic.state_dict().items()}}

    def regression_loss():
        return F.mse_loss(mlp(xr), yr)

    def logistic_loss():
        logits = logistic(xc).squeeze(1)
        return (F.binary_cross_entropy_with_logits(logits, yc)
                + 1e-2 * logistic.weight.pow(2).sum())

    if compile and not compile_closure:
        regression_loss = torch.compile(regression_loss)
        logistic_loss = torch.compile(logistic_loss)

    losses = []
    wolfe = torch.optim.LBFGS(mlp.parameters(), lr=1, max_iter=10, history_size=6,
                              line_search_fn="strong_wolfe")
    wolfe_steps = fit(regression_loss, wolfe, 4, losses, compile and compile_closure)
    n_wolfe_evals = len(losses)
    plain = torch.optim.LBFGS(logistic.parameters(), lr=0.5, max_iter=4, history_size=4)
    plain_steps = fit(logistic_loss, plain, 3, losses,
                      compile and compile_closure)

    state = wolfe.state[wolfe._params[0]]
    with torch.no_grad():
        accuracy = ((logistic(xc).squeeze(1) > 0).float() == yc).float().mean()
    values = {"wolfe_steps": torch.tensor(wolfe_steps), "plain_steps": torch.tensor(plain_steps),
              "n_wolfe_evals": n_wolfe_evals, "n_plain_evals": len(losses) - n_wolfe_evals,
              "func_evals": int(state["func_evals"]), "n_iter": int(state["n_iter"]),
              "history": len(state["old_dirs"]),
              "mlp_out": mlp(xr[::8]).detach(),
              "logistic_weight": logistic.weight.detach().clone(),
              "logistic_bias": logistic.bias.detach().clone(), "accuracy": accuracy}
    return {"losses": losses, "values": values, "initial_state": initial}
