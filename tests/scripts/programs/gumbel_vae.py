"""A categorical VAE with the Gumbel-softmax trick as its PyTorch re-implementations write it,
on binarised synthetic glyphs: the encoder gives logits for N categorical latents of K classes,
`F.gumbel_softmax(q_y, tau=temp, hard=True)` draws straight-through one-hot codes, the decoder
gives Bernoulli logits; the loss is the reconstruction BCE plus the KL of the categorical
posterior from the uniform prior, sum q log(q K); the temperature is annealed each step as
max(temp_min, temp * exp(-rate * step)) and passed to the step as a Python float. Adam. The
training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

latent_dim = 6          # N categorical variables
categorical_dim = 4     # K classes each


class VAE_gumbel(nn.Module):
    def __init__(self, in_dim=64):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, 48)
        self.fc2 = nn.Linear(48, 32)
        self.fc3 = nn.Linear(32, latent_dim * categorical_dim)
        self.fc4 = nn.Linear(latent_dim * categorical_dim, 32)
        self.fc5 = nn.Linear(32, 48)
        self.fc6 = nn.Linear(48, in_dim)
        self.relu = nn.ReLU()

    def encode(self, x):
        h1 = self.relu(self.fc1(x))
        h2 = self.relu(self.fc2(h1))
        return self.relu(self.fc3(h2))

    def decode(self, z):
        h4 = self.relu(self.fc4(z))
        h5 = self.relu(self.fc5(h4))
        return self.fc6(h5)

    def forward(self, x, temp, hard):
        q = self.encode(x.view(-1, 64))
        q_y = q.view(q.size(0), latent_dim, categorical_dim)
        z = F.gumbel_softmax(q_y, tau=temp, hard=hard)
        z = z.view(-1, latent_dim * categorical_dim)
        return self.decode(z), F.softmax(q_y, dim=-1).reshape(*q.size())


def loss_function(recon_x, x, qy):
    BCE = F.binary_cross_entropy_with_logits(recon_x, x.view(-1, 64), reduction="sum") \
        / x.shape[0]
    log_ratio = torch.log(qy * categorical_dim + 1e-20)
    KLD = torch.sum(qy * log_ratio, dim=-1).mean()
    return BCE + KLD, BCE, KLD


def make_glyphs(n, rng):
    """8x8 binary images: a random horizontal bar, vertical bar and corner, with flipped pixels."""
    imgs = np.zeros((n, 8, 8), np.float32)
    for i in range(n):
        imgs[i, rng.integers(0, 8), :] = 1
        imgs[i, :, rng.integers(0, 8)] = 1
        c = rng.integers(0, 4)
        imgs[i, (c // 2) * 6:(c // 2) * 6 + 2, (c % 2) * 6:(c % 2) * 6 + 2] = 1
    flips = rng.uniform(size=imgs.shape) < 0.03
    return np.abs(imgs - flips).astype(np.float32)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(8)
    data = torch.from_numpy(make_glyphs(96, rng)).unsqueeze(1)
    model = VAE_gumbel()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    temp, temp_min, ANNEAL_RATE = 1.0, 0.5, 0.03
    hard = True

    def train_step(data, temp):
        optimizer.zero_grad()
        recon_batch, qy = model(data, temp, hard)
        loss, bce, kld = loss_function(recon_batch, data, qy)
        loss.backward()
        optimizer.step()
        return loss, kld

    if compile:
        train_step = torch.compile(train_step)
    losses, temps, klds = [], [], []
    model.train()
    step = 0
    for epoch in range(3):
        for batch_idx in range(0, 96, 24):
            loss, kld = train_step(data[batch_idx:batch_idx + 24], temp)
            losses.append(loss.item())
            klds.append(kld.item())
            temps.append(temp)
            step += 1
            temp = np.maximum(temp * np.exp(-ANNEAL_RATE * step), temp_min)

    model.eval()
    with torch.no_grad():
        torch.manual_seed(3)
        recon, qy = model(data[:8], temp, True)
        codes = qy.view(-1, latent_dim, categorical_dim).argmax(-1)
        # a one-hot prior sample decoded, as the samples grid of these scripts is made
        ind = torch.tensor([[i % categorical_dim for i in range(latent_dim)]])
        z = F.one_hot(ind, categorical_dim).float().view(1, -1)
        sample = torch.sigmoid(model.decode(z))
    values = {"temps": np.array(temps, dtype=np.float64), "klds": np.array(klds),
              "recon": recon, "codes": codes, "sample": sample}
    return {"losses": losses, "values": values, "initial_state": initial}
