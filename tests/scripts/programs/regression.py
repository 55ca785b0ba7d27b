"""Polynomial regression (pytorch/examples regression/main.py: make_features, a Linear layer,
manual SGD through param.data, loop until the loss is small)."""
import numpy as np
import torch
import torch.nn.functional as F

POLY_DEGREE = 4


def make_features(x):
    """Builds features i.e. a matrix with columns [x, x^2, x^3, x^4]."""
    x = x.unsqueeze(1)
    return torch.cat([x ** i for i in range(1, POLY_DEGREE + 1)], 1)


def poly_desc(W, b):
    result = 'y = '
    for i, w in enumerate(W):
        result += '{:+.2f} x^{} '.format(w, i + 1)
    result += '{:+.2f}'.format(b[0])
    return result


def main(seed=0, compile=False, initial_state=None, max_steps=300):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    W_target = torch.tensor(rng.normal(size=(POLY_DEGREE, 1)), dtype=torch.float32) * 5
    b_target = torch.tensor(rng.normal(size=1), dtype=torch.float32) * 5

    def f(x):
        return x.mm(W_target) + b_target.item()

    def get_batch(batch_size=32):
        random = torch.from_numpy(rng.normal(size=batch_size).astype(np.float32))
        x = make_features(random)
        y = f(x)
        return x, y

    fc = torch.nn.Linear(W_target.size(0), 1)
    if initial_state is not None:
        fc.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in fc.state_dict().items()}

    def step(batch_x, batch_y):
        fc.zero_grad()
        output = F.smooth_l1_loss(fc(batch_x), batch_y)
        output.backward()
        for param in fc.parameters():
            param.data.add_(-0.1 * param.grad)
        return output

    if compile:
        step = torch.compile(step)
    losses = []
    for batch_idx in range(1, max_steps + 1):
        batch_x, batch_y = get_batch()
        loss = step(batch_x, batch_y).item()
        losses.append(loss)
        if loss < 1e-3:
            break
    return {"losses": losses, "initial_state": initial,
            "learned": poly_desc(fc.weight.view(-1), fc.bias),
            "actual": poly_desc(W_target.view(-1), b_target)}


if __name__ == "__main__":
    print(main())
