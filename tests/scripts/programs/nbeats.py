"""N-BEATS forecasting as its reference ports write it: training windows cut from one series with
`Tensor.unfold(0, backcast + forecast, step)`, stacks of fully connected blocks each emitting
expansion coefficients (thetas) for a backcast and a forecast basis: a trend stack whose basis is
powers of normalized time (`torch.arange(...) ** p`, stacked), a seasonality stack whose basis is
`torch.cos`/`torch.sin` harmonics, a generic stack with learned linear bases; doubly residual
stacking (each block's backcast subtracted from the input, its forecast added to the total), a
quantile head of offsets, the pinball loss written by hand (`torch.max((q - 1) * e, q * e)`),
`NAdam`, `clip_grad_value_`, and sMAPE on held-out windows. The training step and the sMAPE are
the compiled functions."""
import numpy as np
import torch
import torch.nn as nn


def linear_space(backcast_length, forecast_length):
    ls = torch.arange(-backcast_length, forecast_length, 1, dtype=torch.float32) / forecast_length
    return ls[:backcast_length], ls[backcast_length:]


class Block(nn.Module):
    def __init__(self, units, thetas_dim, backcast_length, forecast_length, share_thetas=False):
        super().__init__()
        self.backcast_length, self.forecast_length = backcast_length, forecast_length
        self.fc = nn.Sequential(nn.Linear(backcast_length, units), nn.ReLU(),
                                nn.Linear(units, units), nn.ReLU(),
                                nn.Linear(units, units), nn.ReLU())
        if share_thetas:
            self.theta_f_fc = self.theta_b_fc = nn.Linear(units, thetas_dim, bias=False)
        else:
            self.theta_b_fc = nn.Linear(units, thetas_dim, bias=False)
            self.theta_f_fc = nn.Linear(units, thetas_dim, bias=False)
        self.backcast_linspace, self.forecast_linspace = linear_space(backcast_length,
                                                                      forecast_length)


def trend_basis(thetas, t):
    p = thetas.size(-1)
    T = torch.stack([t ** i for i in range(p)]).float()
    return thetas.mm(T)


def seasonality_basis(thetas, t):
    p = thetas.size(-1)
    p1, p2 = (p // 2, p // 2) if p % 2 == 0 else (p // 2, p // 2 + 1)
    s1 = torch.stack([torch.cos(2 * np.pi * i * t) for i in range(p1)]).float()
    s2 = torch.stack([torch.sin(2 * np.pi * i * t) for i in range(p2)]).float()
    S = torch.cat([s1, s2])
    return thetas.mm(S)


class TrendBlock(Block):
    def __init__(self, units, thetas_dim, backcast_length, forecast_length):
        super().__init__(units, thetas_dim, backcast_length, forecast_length, share_thetas=True)

    def forward(self, x):
        x = self.fc(x)
        backcast = trend_basis(self.theta_b_fc(x), self.backcast_linspace)
        forecast = trend_basis(self.theta_f_fc(x), self.forecast_linspace)
        return backcast, forecast


class SeasonalityBlock(Block):
    def __init__(self, units, thetas_dim, backcast_length, forecast_length):
        super().__init__(units, thetas_dim, backcast_length, forecast_length, share_thetas=True)

    def forward(self, x):
        x = self.fc(x)
        backcast = seasonality_basis(self.theta_b_fc(x), self.backcast_linspace)
        forecast = seasonality_basis(self.theta_f_fc(x), self.forecast_linspace)
        return backcast, forecast


class GenericBlock(Block):
    def __init__(self, units, thetas_dim, backcast_length, forecast_length):
        super().__init__(units, thetas_dim, backcast_length, forecast_length)
        self.backcast_fc = nn.Linear(thetas_dim, backcast_length)
        self.forecast_fc = nn.Linear(thetas_dim, forecast_length)

    def forward(self, x):
        x = self.fc(x)
        theta_b = torch.relu(self.theta_b_fc(x))
        theta_f = torch.relu(self.theta_f_fc(x))
        return self.backcast_fc(theta_b), self.forecast_fc(theta_f)


class NBeatsNet(nn.Module):
    def __init__(self, backcast_length, forecast_length, units=32, quantiles=(0.1, 0.5, 0.9)):
        super().__init__()
        self.forecast_length = forecast_length
        self.stacks = nn.ModuleList([
            nn.ModuleList([TrendBlock(units, 3, backcast_length, forecast_length)
                           for _ in range(2)]),
            nn.ModuleList([SeasonalityBlock(units, 6, backcast_length, forecast_length)
                           for _ in range(2)]),
            nn.ModuleList([GenericBlock(units, 8, backcast_length, forecast_length)]),
        ])
        self.register_buffer("quantiles", torch.tensor(quantiles))
        self.quantile_offsets = nn.Parameter(torch.zeros(len(quantiles)))

    def forward(self, backcast):
        forecast = torch.zeros(backcast.size(0), self.forecast_length)
        for stack in self.stacks:
            for block in stack:
                b, f = block(backcast)
                backcast = backcast - b
                forecast = forecast + f
        return backcast, forecast[..., None] + self.quantile_offsets


def pinball_loss(prediction, target, quantiles):
    errors = target[..., None] - prediction
    return torch.max((quantiles - 1) * errors, quantiles * errors).mean()


def smape(prediction, target):
    denominator = (prediction.abs() + target.abs()).clamp(min=1e-8)
    return 200.0 * torch.mean((prediction - target).abs() / denominator)


def make_series(rng, n=260):
    t = np.arange(n, dtype=np.float64)
    series = (0.02 * t + np.sin(2 * np.pi * t / 12.0) + 0.5 * np.cos(2 * np.pi * t / 6.0)
              + 0.1 * rng.standard_normal(n) + 3.0)
    return torch.from_numpy(series.astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(31)
    backcast_length, forecast_length = 24, 6
    series = make_series(rng)
    split = 200
    train_windows = series[:split].unfold(0, backcast_length + forecast_length, 2)
    test_windows = series[split - backcast_length:].unfold(
        0, backcast_length + forecast_length, forecast_length)
    level = series[:split].mean()
    model = NBeatsNet(backcast_length, forecast_length)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.NAdam(model.parameters(), lr=2e-3, momentum_decay=4e-3)

    def train_step(window):
        x, y = window[:, :backcast_length] - level, window[:, backcast_length:] - level
        optimizer.zero_grad()
        _, forecast = model(x)
        loss = pinball_loss(forecast, y, model.quantiles)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_value=0.5)
        optimizer.step()
        return loss

    def evaluate(window):
        _, forecast = model(window[:, :backcast_length] - level)
        median = forecast[..., 1] + level
        return smape(median, window[:, backcast_length:])

    if compile:
        train_step, evaluate = torch.compile(train_step), torch.compile(evaluate)
    losses, smapes = [], []
    for epoch in range(4):
        model.train()
        perm = torch.randperm(train_windows.size(0))
        for idx in perm.split(22):
            losses.append(train_step(train_windows[idx]).item())
        model.eval()
        with torch.no_grad():
            smapes.append(evaluate(test_windows).item())

    with torch.no_grad():
        residual, forecast = model(test_windows[:, :backcast_length] - level)
    coverage = ((test_windows[:, backcast_length:] - level) <= forecast[..., 2]).float().mean()
    values = {"smapes": torch.tensor(smapes), "forecast": forecast, "residual": residual,
              "coverage_q90": coverage, "offsets": model.quantile_offsets.detach(),
              "n_windows": int(train_windows.size(0)),
              "window_shape": str(tuple(test_windows.shape))}
    return {"losses": losses, "values": values, "initial_state": initial}
