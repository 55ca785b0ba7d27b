"""Variational autoencoder (pytorch/examples vae/main.py): encode/reparameterize/decode,
binary cross entropy (sum) + KL divergence, Adam; synthetic 8x8 images in [0, 1]."""
import numpy as np
import torch
import torch.utils.data
from torch import nn, optim
from torch.nn import functional as F


class VAE(nn.Module):
    def __init__(self):
        super(VAE, self).__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc21 = nn.Linear(32, 4)
        self.fc22 = nn.Linear(32, 4)
        self.fc3 = nn.Linear(4, 32)
        self.fc4 = nn.Linear(32, 64)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 64))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 64), reduction='sum')
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def main(seed=0, compile=False, initial_state=None, epochs=3):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    strokes = np.random.default_rng(3).random((4, 64)) > 0.6
    images = (strokes[rng.integers(0, 4, 256)] * 0.9 + 0.05 * rng.random((256, 64)))
    dataset = torch.utils.data.TensorDataset(torch.tensor(images, dtype=torch.float32))
    train_loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    model = VAE()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.Adam(model.parameters(), lr=1e-2)

    def train_step(data):
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(1, epochs + 1):
        model.train()
        train_loss = 0
        for batch_idx, (data,) in enumerate(train_loader):
            loss = train_step(data)
            train_loss += loss.item()
        losses.append(train_loss / len(train_loader.dataset))
    with torch.no_grad():
        sample = torch.randn(8, 4)
        sample = model.decode(sample).view(8, 1, 8, 8)
    return {"losses": losses, "initial_state": initial, "sample_shape": tuple(sample.shape)}


if __name__ == "__main__":
    print(main())
