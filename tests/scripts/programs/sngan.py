"""A spectrally normalized GAN as the SN-GAN reimplementations (Miyato et al.'s hinge-loss
recipe, the pytorch-spectral-normalization-gan and mimicry-style code) write it in plain PyTorch:
every discriminator conv and linear wrapped in `nn.utils.parametrizations.spectral_norm` (one
power iteration per training forward, `_u`/`_v` buffers in the state dict), the hinge loss
`F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()` for D and `-d_fake.mean()` for G, Adam
with betas (0.0, 0.9), two critic steps per generator step (n_critic=2) with the generator's
fake detached for D's step, on 8x8 images of bars. The D and G steps are the compiled
functions."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

Z_DIM = 8


class Generator(nn.Module):
    def __init__(self, ch=16):
        super().__init__()
        self.fc = nn.Linear(Z_DIM, ch * 4 * 4)
        self.net = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(),
                                 nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1),
                                 nn.BatchNorm2d(ch // 2), nn.ReLU(),
                                 nn.Conv2d(ch // 2, 1, 3, padding=1), nn.Tanh())
        self.ch = ch

    def forward(self, z):
        return self.net(self.fc(z).view(-1, self.ch, 4, 4))


class Discriminator(nn.Module):
    def __init__(self, ch=16):
        super().__init__()
        self.net = nn.Sequential(spectral_norm(nn.Conv2d(1, ch, 3, padding=1)),
                                 nn.LeakyReLU(0.1),
                                 spectral_norm(nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)),
                                 nn.LeakyReLU(0.1), nn.Flatten(),
                                 spectral_norm(nn.Linear(2 * ch * 4 * 4, 1)))

    def forward(self, x):
        return self.net(x).squeeze(1)


def bars(generator, n):
    """8x8 images with one bright horizontal or vertical bar on a dark ground, in [-1, 1]."""
    images = -torch.ones(n, 1, 8, 8)
    where = torch.randint(0, 8, (n,), generator=generator)
    vertical = torch.rand(n, generator=generator) < 0.5
    for i in range(n):
        if vertical[i]:
            images[i, 0, :, where[i]] = 1.0
        else:
            images[i, 0, where[i], :] = 1.0
    return images


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    data = bars(torch.Generator().manual_seed(2), 96)
    G, D = Generator(), Discriminator()
    if initial_state is not None:
        G.load_state_dict(initial_state["G"])
        D.load_state_dict(initial_state["D"])
    initial = {"G": {k: v.clone() for k, v in G.state_dict().items()},
               "D": {k: v.clone() for k, v in D.state_dict().items()}}
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.9))
    n_critic, batch = 2, 16

    def d_step(real, z):
        fake = G(z).detach()
        loss = F.relu(1.0 - D(real)).mean() + F.relu(1.0 + D(fake)).mean()
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        return loss

    def g_step(z):
        loss = -D(G(z)).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        return loss

    if compile:
        d_step = torch.compile(d_step)
        g_step = torch.compile(g_step)
    losses, k = [], 0
    for it in range(4):
        for _ in range(n_critic):
            real = data[k * batch % len(data):][:batch]
            k += 1
            losses.append(d_step(real, torch.randn(batch, Z_DIM)).item())
        losses.append(g_step(torch.randn(batch, Z_DIM)).item())

    # each layer's weight as used, its largest singular value about 1 after the power iterations
    sigmas = []
    for layer in D.net:
        if hasattr(layer, "parametrizations"):
            w = layer.weight.detach()
            sigmas.append(torch.linalg.svdvals(w.reshape(w.shape[0], -1))[0])
    layer = D.net[0]
    D.eval()
    with torch.no_grad():
        z = torch.randn(4, Z_DIM)
        scores = D(torch.cat([data[:4], G(z)]))
        eval_weight = layer.weight.clone()
    values = {"sigmas": torch.stack(sigmas), "scores": scores,
              "u": layer.parametrizations.weight[0]._u.clone(),
              "v": layer.parametrizations.weight[0]._v.clone(),
              "original": layer.parametrizations.weight.original.detach().clone(),
              "eval_weight": eval_weight,
              "keys": ",".join(k for k in D.state_dict() if k.startswith("net.0."))}
    return {"losses": losses, "values": values, "initial_state": initial}
