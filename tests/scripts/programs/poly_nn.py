"""Polynomial fit with nn (tutorial: Sequential(Linear(3, 1), Flatten(0, 1)), MSELoss(sum),
manual parameter update under no_grad)."""
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
    learning_rate = 1e-6

    def step():
        y_pred = model(xx)
        loss = loss_fn(y_pred, y)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= learning_rate * param.grad
        return loss

    if compile:
        step = torch.compile(step)
    losses = []
    for t in range(steps):
        loss = step()
        if t % 20 == 19:
            losses.append(loss.item())
    linear_layer = model[0]
    return {"losses": losses, "initial_state": initial,
            "result": [linear_layer.bias.item()] + linear_layer.weight[:, 0].tolist()}


if __name__ == "__main__":
    print(main())
