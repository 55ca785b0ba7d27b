"""Polynomial fit with torch.optim (tutorial: RMSprop over an nn.Sequential)."""
import math

import torch


def main(seed=0, compile=False, initial_state=None, steps=200):
    torch.manual_seed(seed)
    x = torch.linspace(-math.pi, math.pi, 200)
    y = torch.sin(x)
    p = torch.tensor([1, 2, 3])
    xx = x.unsqueeze(-1).pow(p)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 1),
        torch.nn.Flatten(0, 1)
    )
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = torch.nn.MSELoss(reduction='sum')
    learning_rate = 1e-3
    optimizer = torch.optim.RMSprop(model.parameters(), lr=learning_rate)

    def step():
        y_pred = model(xx)
        loss = loss_fn(y_pred, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        step = torch.compile(step)
    losses = []
    for t in range(steps):
        loss = step()
        if t % 20 == 19:
            losses.append(loss.item())
    return {"losses": losses, "initial_state": initial}


if __name__ == "__main__":
    print(main())
