"""A PatchTST-like long-horizon forecaster as the time-series repositories (PatchTST's
PatchTST_backbone, Time-Series-Library) write it: RevIN (per-instance mean and std, detached,
a learnable affine, denormalized at the end), channel independence by folding channels into the
batch, patching by `Tensor.unfold(dimension, size, step)` after replication padding of the end,
a linear patch embedding plus a learned positional encoding, `nn.TransformerEncoder`
(batch_first, norm_first=True, GELU), a flatten head per series, `nn.MSELoss` to train and
`nn.L1Loss` as a metric, Adam with `ReduceLROnPlateau` stepped on the validation loss each epoch.
The training step is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn

SEQ_LEN, PRED_LEN, N_VARS = 24, 8, 3
PATCH_LEN, STRIDE = 6, 3


class RevIN(nn.Module):
    def __init__(self, num_features, eps=1e-5, affine=True):
        super().__init__()
        self.num_features, self.eps, self.affine = num_features, eps, affine
        if self.affine:
            self.affine_weight = nn.Parameter(torch.ones(self.num_features))
            self.affine_bias = nn.Parameter(torch.zeros(self.num_features))

    def forward(self, x, mode):
        if mode == "norm":
            self._get_statistics(x)
            x = self._normalize(x)
        elif mode == "denorm":
            x = self._denormalize(x)
        else:
            raise NotImplementedError
        return x

    def _get_statistics(self, x):
        dim2reduce = tuple(range(1, x.ndim - 1))
        self.mean = torch.mean(x, dim=dim2reduce, keepdim=True).detach()
        self.stdev = torch.sqrt(
            torch.var(x, dim=dim2reduce, keepdim=True, unbiased=False) + self.eps).detach()

    def _normalize(self, x):
        x = (x - self.mean) / self.stdev
        if self.affine:
            x = x * self.affine_weight + self.affine_bias
        return x

    def _denormalize(self, x):
        if self.affine:
            x = (x - self.affine_bias) / (self.affine_weight + self.eps * self.eps)
        return x * self.stdev + self.mean


class FlattenHead(nn.Module):
    def __init__(self, nf, target_window, head_dropout=0.0):
        super().__init__()
        self.flatten = nn.Flatten(start_dim=-2)
        self.linear = nn.Linear(nf, target_window)
        self.dropout = nn.Dropout(head_dropout)

    def forward(self, x):                   # x: [bs, nvars, d_model, patch_num]
        return self.dropout(self.linear(self.flatten(x)))


class PatchTST(nn.Module):
    def __init__(self, d_model=16, n_heads=2, e_layers=2, d_ff=32, dropout=0.0):
        super().__init__()
        self.revin = RevIN(N_VARS)
        self.padding_patch_layer = nn.ReplicationPad1d((0, STRIDE))
        self.patch_num = (SEQ_LEN - PATCH_LEN) // STRIDE + 2
        self.W_P = nn.Linear(PATCH_LEN, d_model)
        self.W_pos = nn.Parameter(torch.empty(self.patch_num, d_model).uniform_(-0.02, 0.02))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, e_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.head = FlattenHead(d_model * self.patch_num, PRED_LEN)

    def forward(self, x):                                      # x: [bs, seq_len, nvars]
        x = self.revin(x, "norm")
        x = x.permute(0, 2, 1)                                 # [bs, nvars, seq_len]
        x = self.padding_patch_layer(x)
        x = x.unfold(dimension=-1, size=PATCH_LEN, step=STRIDE)  # [bs, nvars, patch_num, len]
        bs, n_vars = x.shape[0], x.shape[1]
        u = torch.reshape(x, (bs * n_vars, x.shape[2], x.shape[3]))
        u = self.W_P(u) + self.W_pos                           # [bs * nvars, patch_num, d]
        z = self.encoder(u)
        z = torch.reshape(z, (-1, n_vars, z.shape[-2], z.shape[-1]))
        z = z.permute(0, 1, 3, 2)                              # [bs, nvars, d_model, patch_num]
        z = self.head(z)                                       # [bs, nvars, pred_len]
        z = z.permute(0, 2, 1)
        return self.revin(z, "denorm")


def make_series(rng, n):
    """Sums of two seasonal waves with per-series level and scale, plus noise."""
    t = np.arange(SEQ_LEN + PRED_LEN)
    out = np.zeros((n, SEQ_LEN + PRED_LEN, N_VARS), np.float32)
    for i in range(n):
        for c in range(N_VARS):
            phase, level, scale = rng.uniform(0, 2 * math.pi), rng.normal(0, 5), rng.uniform(1, 4)
            wave = np.sin(2 * math.pi * t / 12 + phase) + 0.5 * np.sin(2 * math.pi * t / 6 + c)
            out[i, :, c] = level + scale * wave + rng.normal(0, 0.1, len(t))
    return torch.from_numpy(out)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(6)
    train, val = make_series(rng, 32), make_series(rng, 16)
    model = PatchTST()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion, mae = nn.MSELoss(), nn.L1Loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                           patience=0, threshold=0.2)

    def train_step(batch_x, batch_y):
        optimizer.zero_grad()
        outputs = model(batch_x)
        loss = criterion(outputs, batch_y)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, val_mse, val_mae, lrs = [], [], [], []
    loader_rng = np.random.default_rng(0)
    for epoch in range(5):
        model.train()
        order = torch.from_numpy(loader_rng.permutation(len(train)))
        for idx in order.split(16):
            batch = train[idx]
            losses.append(train_step(batch[:, :SEQ_LEN], batch[:, SEQ_LEN:]).item())
        # RevIN keeps the statistics of the last batch it normalized
        last_stats = torch.cat([model.revin.mean.flatten(), model.revin.stdev.flatten()])
        model.eval()
        with torch.no_grad():
            pred = model(val[:, :SEQ_LEN])
            vloss = criterion(pred, val[:, SEQ_LEN:])
            val_mse.append(vloss.item())
            val_mae.append(mae(pred, val[:, SEQ_LEN:]).item())
        scheduler.step(vloss)
        lrs.append(optimizer.param_groups[0]["lr"])

    with torch.no_grad():
        x = val[:4, :SEQ_LEN]
        patches = model.padding_patch_layer(x.permute(0, 2, 1)).unfold(-1, PATCH_LEN, STRIDE)
        # RevIN's statistics: denormalizing the normalized input gives the input back
        roundtrip = model.revin(model.revin(x, "norm"), "denorm")
        prediction = model(x)
    values = {"val_mse": np.array(val_mse), "val_mae": np.array(val_mae), "lrs": np.array(lrs),
              "patches": patches, "patch_shape": str(tuple(patches.shape)),
              "roundtrip_err": (roundtrip - x).abs().max(), "prediction": prediction,
              "revin_weight": model.revin.affine_weight.detach().clone(),
              "last_train_stats": last_stats}
    return {"losses": losses, "values": values, "initial_state": initial}
