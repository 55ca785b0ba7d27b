"""DCGAN (pytorch/examples dcgan/main.py), small: ConvTranspose2d generator, Conv2d
discriminator with BatchNorm2d and LeakyReLU, weights_init through Module.apply, BCELoss, Adam
with betas (0.5, 0.999); 16x16 synthetic images, noise drawn with NumPy."""
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import torch.utils.data

nz, ngf, ndf, nc = 8, 8, 8, 1


def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        torch.nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        torch.nn.init.normal_(m.weight, 1.0, 0.02)
        torch.nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, ngpu):
        super(Generator, self).__init__()
        self.ngpu = ngpu
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, nc, 4, 2, 1, bias=False),
            nn.Tanh()
        )

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self, ngpu):
        super(Discriminator, self).__init__()
        self.ngpu = ngpu
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False),
            nn.Sigmoid()
        )

    def forward(self, input):
        output = self.main(input)
        return output.view(-1, 1).squeeze(1)


def main(seed=0, compile=False, initial_state=None, niter=2):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device("cpu")
    yy, xx = np.mgrid[0:16, 0:16]
    blobs = [np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
             for cx, cy in rng.integers(4, 12, (64, 2))]
    images = torch.tensor(np.stack(blobs)[:, None] * 2 - 1, dtype=torch.float32)
    dataloader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images),
                                             batch_size=16, shuffle=False)
    netG = Generator(1).to(device)
    netG.apply(weights_init)
    netD = Discriminator(1).to(device)
    netD.apply(weights_init)
    if initial_state is not None:
        netG.load_state_dict(initial_state["G"])
        netD.load_state_dict(initial_state["D"])
    initial = {"G": {k: v.clone() for k, v in netG.state_dict().items()},
               "D": {k: v.clone() for k, v in netD.state_dict().items()}}
    criterion = nn.BCELoss()
    real_label, fake_label = 1, 0
    optimizerD = optim.Adam(netD.parameters(), lr=0.0002 * 10, betas=(0.5, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=0.0002 * 10, betas=(0.5, 0.999))

    def step(real_cpu, noise):
        netD.zero_grad()
        batch_size = real_cpu.size(0)
        label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype, device=device)
        output = netD(real_cpu)
        errD_real = criterion(output, label)
        errD_real.backward()
        fake = netG(noise)
        label.fill_(fake_label)
        output = netD(fake.detach())
        errD_fake = criterion(output, label)
        errD_fake.backward()
        errD = errD_real + errD_fake
        optimizerD.step()
        netG.zero_grad()
        label.fill_(real_label)
        output = netD(fake)
        errG = criterion(output, label)
        errG.backward()
        optimizerG.step()
        return errD, errG

    if compile:
        step = torch.compile(step)
    losses = []
    for epoch in range(niter):
        for i, data in enumerate(dataloader, 0):
            real_cpu = data[0].to(device)
            noise = torch.from_numpy(rng.standard_normal((real_cpu.size(0), nz, 1, 1))
                                     .astype(np.float32))
            errD, errG = step(real_cpu, noise)
            losses += [errD.item(), errG.item()]
    return {"losses": losses, "initial_state": initial}


if __name__ == "__main__":
    print(main())
