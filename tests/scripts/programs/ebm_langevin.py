"""An energy-based model trained by contrastive divergence, as the JEM / "Implicit Generation
and Generalization in EBMs" reimplementations (and the UvA deep-learning tutorial) write it: an
MLP energy E(x) whose layers carry `nn.utils.parametrizations.spectral_norm`, negative samples
drawn by Langevin dynamics (`x.requires_grad_(True)`, `torch.autograd.grad(energy.sum(), x)`
inside a loop with the parameters' `requires_grad` switched off, a noisy gradient step, then
`x.detach_()`, `clamp_`), a replay buffer of past samples (95% of each batch from the buffer,
the rest fresh uniform noise, drawn with `torch.rand` and `torch.randint`), the loss
E(data) - E(samples) plus an energy-magnitude regulariser, Adam, and the buffer refreshed by
index assignment. The model's step (loss, backward, step) is the compiled function; the sampler
runs eagerly."""
import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm


class EnergyNet(nn.Module):
    def __init__(self, dim=2, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Linear(dim, hidden)), nn.SiLU(),
            spectral_norm(nn.Linear(hidden, hidden)), nn.SiLU(),
            nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


class Sampler:
    def __init__(self, model, sample_size, max_len=128):
        self.model = model
        self.sample_size = sample_size
        self.max_len = max_len
        self.examples = torch.rand(max_len, *sample_size) * 4 - 2

    def sample_new_exmps(self, steps=10, step_size=0.05):
        n = 16
        n_new = int(n * 0.05) + 1
        rand = torch.rand(n_new, *self.sample_size) * 4 - 2
        idx = torch.randint(0, self.max_len, (n - n_new,))
        old = self.examples[idx]
        inp = torch.cat([rand, old], dim=0).detach()
        inp = Sampler.generate_samples(self.model, inp, steps=steps, step_size=step_size)
        self.examples[idx] = inp[n_new:]         # the refined samples go back to the buffer
        return inp

    @staticmethod
    def generate_samples(model, inp, steps=10, step_size=0.05):
        is_training = model.training
        model.eval()
        for p in model.parameters():
            p.requires_grad = False
        inp.requires_grad = True
        noise = torch.randn(inp.shape)
        for _ in range(steps):
            noise.normal_(0, 0.005)
            inp.data.add_(noise.data)
            inp.data.clamp_(min=-2.0, max=2.0)
            energy = -model(inp)
            grad, = torch.autograd.grad(energy.sum(), inp)
            grad.data.clamp_(-0.03, 0.03)
            inp.data.add_(-step_size * grad.data)
            inp.data.clamp_(min=-2.0, max=2.0)
        for p in model.parameters():
            p.requires_grad = True
        model.train(is_training)
        inp.detach_()
        return inp


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(4)
    # two Gaussian blobs
    centres = np.array([[-1.0, -1.0], [1.0, 0.8]], np.float32)
    data = centres[rng.integers(0, 2, 96)] + 0.15 * rng.standard_normal((96, 2)).astype(
        np.float32)
    data = torch.from_numpy(data)

    model = EnergyNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.0, 0.999))
    sampler = Sampler(model, (2,))
    alpha = 0.1

    def train_step(real, fake):
        # the UvA tutorial's step: one forward of both halves, the CD loss and a regulariser
        real = real + 0.005 * torch.randn_like(real)
        inp = torch.cat([real, fake], dim=0)
        real_out, fake_out = model(inp).chunk(2, dim=0)     # scores: the energy is -model(x)
        reg_loss = alpha * (real_out ** 2 + fake_out ** 2).mean()
        cdiv_loss = fake_out.mean() - real_out.mean()
        loss = reg_loss + cdiv_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss, cdiv_loss.detach(), reg_loss.detach()

    if compile:
        train_step = torch.compile(train_step)
    model.train()
    losses, cdivs = [], []
    for epoch in range(2):
        for real in data.split(16):
            fake = sampler.sample_new_exmps(steps=10, step_size=0.05)
            loss, cdiv, reg = train_step(real, fake)
            losses.append(loss.item())
            cdivs.append(cdiv.item())

    model.eval()
    grid = torch.stack(torch.meshgrid(torch.linspace(-2, 2, 5), torch.linspace(-2, 2, 5),
                                      indexing="xy"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        energy_grid = -model(grid)
        energy_data = -model(data[:8])
    sigma = torch.linalg.matrix_norm(model.net[0].weight, ord=2)
    values = {"cdiv": torch.tensor(cdivs), "energy_grid": energy_grid,
              "energy_data": energy_data, "buffer": sampler.examples.clone(),
              "sigma": sigma.detach(), "u": model.net[2].parametrizations.weight[0]._u.clone(),
              "params_trainable": all(p.requires_grad for p in model.parameters()),
              "buffer_in_range": bool(sampler.examples.abs().max() <= 2.0)}
    return {"losses": losses, "values": values, "initial_state": initial}
