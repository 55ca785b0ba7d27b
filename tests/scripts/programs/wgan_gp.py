"""WGAN-GP as the improved-training-of-WGANs repos write it: a critic and a generator (MLPs on a
2-D mixture of Gaussians), `n_critic` critic steps per generator step, the gradient penalty on
random interpolates through `torch.autograd.grad(..., create_graph=True)` with
`grad_outputs=torch.ones_like(...)`, `(grad.norm(2, dim=1) - 1) ** 2`, and
`Adam(lr, betas=(0., 0.9))` for both nets. The critic step and the generator step are the
compiled functions."""
import numpy as np
import torch
import torch.nn as nn
import torch.autograd as autograd


def gradient_penalty(critic, real, fake):
    alpha = torch.rand(real.size(0), 1)
    alpha = alpha.expand_as(real)
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    critic_interpolates = critic(interpolates)
    gradients = autograd.grad(outputs=critic_interpolates, inputs=interpolates,
                              grad_outputs=torch.ones_like(critic_interpolates),
                              create_graph=True, retain_graph=True, only_inputs=True)[0]
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean()


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(3)
    centers = np.array([[2, 0], [-2, 0], [0, 2], [0, -2]], dtype=np.float32)
    data = centers[rng.integers(0, 4, 256)] + 0.1 * rng.standard_normal((256, 2), dtype=np.float32)
    data = torch.from_numpy(data)
    noise_dim, lambda_gp, n_critic = 4, 10.0, 3

    generator = nn.Sequential(nn.Linear(noise_dim, 32), nn.ReLU(True), nn.Linear(32, 32),
                              nn.ReLU(True), nn.Linear(32, 2))
    critic = nn.Sequential(nn.Linear(2, 32), nn.ReLU(True), nn.Linear(32, 32), nn.ReLU(True),
                           nn.Linear(32, 1))
    if initial_state is not None:
        generator.load_state_dict(initial_state["G"])
        critic.load_state_dict(initial_state["D"])
    initial = {"G": {k: v.clone() for k, v in generator.state_dict().items()},
               "D": {k: v.clone() for k, v in critic.state_dict().items()}}
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0., 0.9))
    optimizer_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0., 0.9))

    def critic_step(real):
        for p in critic.parameters():
            p.requires_grad = True
        critic.zero_grad()
        z = torch.randn(real.size(0), noise_dim)
        with torch.no_grad():
            fake = generator(z)
        d_real = critic(real).mean()
        d_fake = critic(fake).mean()
        gp = gradient_penalty(critic, real, fake)
        d_loss = d_fake - d_real + lambda_gp * gp
        d_loss.backward()
        optimizer_d.step()
        return d_loss, d_real - d_fake

    def generator_step(batch_size):
        for p in critic.parameters():
            p.requires_grad = False
        generator.zero_grad()
        z = torch.randn(batch_size, noise_dim)
        g_loss = -critic(generator(z)).mean()
        g_loss.backward()
        optimizer_g.step()
        return g_loss

    if compile:
        critic_step = torch.compile(critic_step)
        generator_step = torch.compile(generator_step)
    losses, distances = [], []
    batches = data.split(32)
    for it in range(4):
        for i in range(n_critic):
            d_loss, w_dist = critic_step(batches[(it * n_critic + i) % len(batches)])
            losses.append(d_loss.item())
            distances.append(w_dist.item())
        losses.append(generator_step(32).item())
    values = {"g_out": generator[-1].weight.detach().clone(),
              "d_in": critic[0].weight.detach().clone(),
              "distances": torch.tensor(distances),
              "critic_grad_flags": ",".join(str(p.requires_grad) for p in critic.parameters())}
    return {"losses": losses, "values": values, "initial_state": initial}
