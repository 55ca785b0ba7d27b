"""A neural ODE fitted to a damped spiral as the torchdiffeq demos write it, with a hand-written
fixed-step RK4 solver instead of the library: an `ODEFunc` module whose MLP vector field
`f(t, y)` works on `y ** 3` (the demo's cubic features) and counts its evaluations, an
`odeint`-style loop that stacks the states at the requested times, mini-batches of trajectory
windows (random start points drawn with `torch.from_numpy(np.random.choice(...))`), an L1 loss
on the predicted windows, RMSprop, and a running-average meter. The training step is the
compiled function."""
import numpy as np
import torch
import torch.nn as nn


class ODEFunc(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0, std=0.1)
                nn.init.constant_(m.bias, val=0)

    def forward(self, t, y):
        return self.net(y ** 3)


def rk4_step(func, t0, dt, y0):
    k1 = func(t0, y0)
    k2 = func(t0 + dt / 2, y0 + dt * k1 / 2)
    k3 = func(t0 + dt / 2, y0 + dt * k2 / 2)
    k4 = func(t0 + dt, y0 + dt * k3)
    return y0 + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6


def odeint(func, y0, t, substeps=2):
    """RK4 with `substeps` equal steps between consecutive requested times."""
    ys = [y0]
    y = y0
    for t0, t1 in zip(t[:-1], t[1:]):
        dt = (t1 - t0) / substeps
        for i in range(substeps):
            y = rk4_step(func, t0 + i * dt, dt, y)
        ys.append(y)
    return torch.stack(ys)


class RunningAverageMeter:
    def __init__(self, momentum=0.99):
        self.momentum = momentum
        self.val, self.avg = None, 0

    def update(self, val):
        self.avg = val if self.val is None else self.avg * self.momentum + val * (1 - self.momentum)
        self.val = val


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    np.random.seed(3)
    data_size, batch_time, batch_size = 200, 8, 16
    true_y0 = torch.tensor([[2., 0.]])
    t = torch.linspace(0., 5., data_size)
    true_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])

    class Lambda(nn.Module):
        def forward(self, t, y):
            return torch.mm(y ** 3, true_A)

    with torch.no_grad():
        true_y = odeint(Lambda(), true_y0, t, substeps=4)

    def get_batch():
        s = torch.from_numpy(np.random.choice(np.arange(data_size - batch_time, dtype=np.int64),
                                              batch_size, replace=False))
        batch_y0 = true_y[s]                                    # (M, 1, D)
        batch_t = t[:batch_time]                                # (T)
        batch_y = torch.stack([true_y[s + i] for i in range(batch_time)], dim=0)  # (T, M, 1, D)
        return batch_y0, batch_t, batch_y

    func = ODEFunc()
    if initial_state is not None:
        func.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in func.state_dict().items()}
    optimizer = torch.optim.RMSprop(func.parameters(), lr=1e-3)
    loss_meter = RunningAverageMeter(0.97)

    def train_step(batch_y0, batch_t, batch_y):
        optimizer.zero_grad()
        pred_y = odeint(func, batch_y0, batch_t)
        loss = torch.mean(torch.abs(pred_y - batch_y))
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for itr in range(12):
        loss = train_step(*get_batch())
        loss_meter.update(loss.item())
        losses.append(loss.item())

    with torch.no_grad():
        pred_y = odeint(func, true_y0, t[:50])
        test_loss = torch.mean(torch.abs(pred_y - true_y[:50]))
    values = {"true_y_end": true_y[-1], "pred_y": pred_y[::7], "test_loss": test_loss,
              "meter": torch.tensor(loss_meter.avg)}
    return {"losses": losses, "values": values, "initial_state": initial}
