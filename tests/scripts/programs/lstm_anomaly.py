"""An LSTM autoencoder for time-series anomaly detection as the Keras-to-PyTorch tutorials and
repos (e.g. curiousily's ECG autoencoder) write it: an `nn.LSTM(batch_first=True)` encoder whose
last hidden state is `repeat`ed over the time steps into a decoder LSTM, a head predicting each
step's mean and, through `F.softplus`, its variance, trained with `nn.GaussianNLLLoss`;
`OneCycleLR` stepped per batch for the first epochs, then `ReduceLROnPlateau` on the validation
loss once per epoch; the anomaly threshold the 95th `torch.quantile` of the training windows'
reconstruction errors, and test windows with injected spikes flagged above it. The training
step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Encoder(nn.Module):
    def __init__(self, n_features, embedding_dim):
        super().__init__()
        self.rnn1 = nn.LSTM(n_features, 2 * embedding_dim, num_layers=1, batch_first=True)
        self.rnn2 = nn.LSTM(2 * embedding_dim, embedding_dim, num_layers=1, batch_first=True)

    def forward(self, x):
        x, _ = self.rnn1(x)
        _, (hidden_n, _) = self.rnn2(x)
        return hidden_n[-1]                            # (batch, embedding_dim)


class Decoder(nn.Module):
    def __init__(self, seq_len, embedding_dim, n_features):
        super().__init__()
        self.seq_len = seq_len
        self.rnn = nn.LSTM(embedding_dim, 2 * embedding_dim, num_layers=1, batch_first=True)
        self.mean = nn.Linear(2 * embedding_dim, n_features)
        self.var = nn.Linear(2 * embedding_dim, n_features)

    def forward(self, z):
        x = z.unsqueeze(1).repeat(1, self.seq_len, 1)
        x, _ = self.rnn(x)
        return self.mean(x), F.softplus(self.var(x)) + 1e-4


class LSTMAutoencoder(nn.Module):
    def __init__(self, seq_len, n_features=1, embedding_dim=8):
        super().__init__()
        self.encoder = Encoder(n_features, embedding_dim)
        self.decoder = Decoder(seq_len, embedding_dim, n_features)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def make_windows(rng, n, seq_len=20, spikes=False):
    t = np.arange(seq_len)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    x = np.sin(2 * np.pi * t / 10.0 + phase) + 0.1 * rng.standard_normal((n, seq_len))
    if spikes:
        where = rng.integers(0, seq_len, n)
        x[np.arange(n), where] += rng.choice([-3.0, 3.0], n)
    return torch.from_numpy(x[..., None].astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(9)
    train = make_windows(rng, 48)
    val = make_windows(rng, 16)
    test_normal, test_anomalous = make_windows(rng, 8), make_windows(rng, 8, spikes=True)
    model = LSTMAutoencoder(seq_len=20)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.GaussianNLLLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch_size, one_cycle_epochs, epochs = 12, 2, 4
    steps_per_epoch = train.size(0) // batch_size
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-2, epochs=one_cycle_epochs, steps_per_epoch=steps_per_epoch)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                         patience=0)

    def train_step(x):
        mean, var = model(x)
        loss = criterion(mean, x, var)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, val_losses, lrs = [], [], []
    for epoch in range(epochs):
        model.train()
        for x in train.split(batch_size):
            losses.append(train_step(x).item())
            if epoch < one_cycle_epochs:
                one_cycle.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        model.eval()
        with torch.no_grad():
            mean, var = model(val)
            val_loss = criterion(mean, val, var).item()
        val_losses.append(val_loss)
        if epoch >= one_cycle_epochs:
            plateau.step(val_loss)

    with torch.no_grad():
        errors = (model(train)[0] - train).abs().mean(dim=(1, 2))
        threshold = torch.quantile(errors, 0.95)
        normal_errors = (model(test_normal)[0] - test_normal).abs().mean(dim=(1, 2))
        anomalous_errors = (model(test_anomalous)[0] - test_anomalous).abs().mean(dim=(1, 2))
        flagged = (anomalous_errors > threshold).sum().item()
        false_alarms = (normal_errors > threshold).sum().item()
    values = {"val_losses": torch.tensor(val_losses), "lrs": torch.tensor(lrs),
              "threshold": threshold, "errors": errors[:6], "flagged": int(flagged),
              "false_alarms": int(false_alarms), "anomalous_errors": anomalous_errors}
    return {"losses": losses, "values": values, "initial_state": initial}
