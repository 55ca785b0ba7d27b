"""pix2pix as junyanz/pytorch-CycleGAN-and-pix2pix writes it, tiny: a U-Net generator built from
nested skip blocks (each block's output `torch.cat` with its input), a PatchGAN discriminator on
the (input, output) pair (`nn.LeakyReLU(0.2, True)`, `InstanceNorm2d`), a GANLoss holding its
real and fake labels as buffers `expand_as` the prediction, `BCEWithLogitsLoss` plus lambda * L1,
two Adam optimizers with betas (0.5, 0.999) and a linear-decay LambdaLR each, and the repo's
`set_requires_grad` helper toggling `requires_grad_` on D around G's step. The compiled
function is the repo's train.py step: `set_input` (which keeps the batch on the model), then
optimize_parameters (which keeps fake_B and the losses there), returning those losses."""
import numpy as np
import torch
import torch.nn as nn
from torch.optim import lr_scheduler


class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,
                 innermost=False, norm_layer=nn.InstanceNorm2d):
        super().__init__()
        self.outermost = outermost
        use_bias = norm_layer == nn.InstanceNorm2d
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1,
                             bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2,
                                        padding=1)
            model = [downconv] + [submodule] + [uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1,
                                        bias=use_bias)
            model = [downrelu, downconv] + [uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2,
                                        padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm] + [submodule] + [uprelu, upconv, upnorm]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=8):
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 4, innermost=True)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block,
                                             outermost=True)

    def forward(self, input):
        return self.model(input)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=8, n_layers=2, norm_layer=nn.InstanceNorm2d):
        super().__init__()
        use_bias = norm_layer == nn.InstanceNorm2d
        kw, padw = 4, 1
        sequence = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
                    nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
            sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2,
                                   padding=padw, bias=use_bias),
                         norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1,
                               padding=padw, bias=use_bias),
                     norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.model = nn.Sequential(*sequence)

    def forward(self, input):
        return self.model(input)


class GANLoss(nn.Module):
    def __init__(self, target_real_label=1.0, target_fake_label=0.0):
        super().__init__()
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        self.loss = nn.BCEWithLogitsLoss()

    def get_target_tensor(self, prediction, target_is_real):
        target_tensor = self.real_label if target_is_real else self.fake_label
        return target_tensor.expand_as(prediction)

    def __call__(self, prediction, target_is_real):
        return self.loss(prediction, self.get_target_tensor(prediction, target_is_real))


def init_weights(net, init_gain=0.02):
    def init_func(m):
        classname = m.__class__.__name__
        if hasattr(m, "weight") and (classname.find("Conv") != -1 or
                                     classname.find("Linear") != -1):
            nn.init.normal_(m.weight.data, 0.0, init_gain)
            if hasattr(m, "bias") and m.bias is not None:
                nn.init.constant_(m.bias.data, 0.0)
    net.apply(init_func)


def set_requires_grad(nets, requires_grad=False):
    if not isinstance(nets, list):
        nets = [nets]
    for net in nets:
        if net is not None:
            for param in net.parameters():
                param.requires_grad = requires_grad


class Pix2PixModel:
    def __init__(self, lambda_L1=100.0, lr=2e-4, n_epochs=2, n_epochs_decay=2):
        self.netG = UnetGenerator(3, 3)
        self.netD = NLayerDiscriminator(6)
        init_weights(self.netG)
        init_weights(self.netD)
        self.lambda_L1 = lambda_L1
        self.criterionGAN = GANLoss()
        self.criterionL1 = torch.nn.L1Loss()
        self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=lr, betas=(0.5, 0.999))
        self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=lr, betas=(0.5, 0.999))

        def lambda_rule(epoch):
            return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)

        self.schedulers = [lr_scheduler.LambdaLR(o, lr_lambda=lambda_rule)
                           for o in (self.optimizer_G, self.optimizer_D)]

    def set_input(self, real_A, real_B):
        self.real_A, self.real_B = real_A, real_B

    def forward(self):
        self.fake_B = self.netG(self.real_A)

    def backward_D(self):
        fake_AB = torch.cat((self.real_A, self.fake_B), 1)
        pred_fake = self.netD(fake_AB.detach())
        self.loss_D_fake = self.criterionGAN(pred_fake, False)
        real_AB = torch.cat((self.real_A, self.real_B), 1)
        pred_real = self.netD(real_AB)
        self.loss_D_real = self.criterionGAN(pred_real, True)
        self.loss_D = (self.loss_D_fake + self.loss_D_real) * 0.5
        self.loss_D.backward()

    def backward_G(self):
        fake_AB = torch.cat((self.real_A, self.fake_B), 1)
        pred_fake = self.netD(fake_AB)
        self.loss_G_GAN = self.criterionGAN(pred_fake, True)
        self.loss_G_L1 = self.criterionL1(self.fake_B, self.real_B) * self.lambda_L1
        self.loss_G = self.loss_G_GAN + self.loss_G_L1
        self.loss_G.backward()

    def optimize_parameters(self):
        self.forward()
        set_requires_grad(self.netD, True)
        self.optimizer_D.zero_grad()
        self.backward_D()
        self.optimizer_D.step()
        set_requires_grad(self.netD, False)
        self.optimizer_G.zero_grad()
        self.backward_G()
        self.optimizer_G.step()

    def update_learning_rate(self):
        for scheduler in self.schedulers:
            scheduler.step()
        return self.optimizer_G.param_groups[0]["lr"]


def make_pairs(rng, n):
    # B is an edge map of A's smooth colour field: a fixed image-to-image map to learn
    yy, xx = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    centre = rng.uniform(-0.5, 0.5, (n, 3, 2, 1, 1))
    a = np.tanh(2 * (xx * centre[:, :, 0] + yy * centre[:, :, 1]))
    b = np.tanh(3 * np.roll(a, 1, axis=-1) - 2 * a)
    return torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    real_A, real_B = make_pairs(np.random.default_rng(11), 16)
    model = Pix2PixModel()
    if initial_state is not None:
        model.netG.load_state_dict(initial_state["G"])
        model.netD.load_state_dict(initial_state["D"])
    initial = {"G": {k: v.clone() for k, v in model.netG.state_dict().items()},
               "D": {k: v.clone() for k, v in model.netD.state_dict().items()}}

    def train_step(a, b):
        model.set_input(a, b)
        model.optimize_parameters()
        return model.loss_D.detach(), model.loss_G_GAN.detach(), model.loss_G_L1.detach()

    if compile:
        train_step = torch.compile(train_step)
    losses, gan_losses, lrs = [], [], []
    for epoch in range(4):
        for i in range(3):
            a, b = real_A[i * 4:(i + 1) * 4], real_B[i * 4:(i + 1) * 4]
            loss_D, loss_G_GAN, loss_G_L1 = train_step(a, b)
            losses.extend([loss_D.item(), loss_G_L1.item()])
            gan_losses.append(loss_G_GAN.item())
        lrs.append(model.update_learning_rate())

    with torch.no_grad():
        fake = model.netG(real_A[12:])
        l1 = (fake - real_B[12:]).abs().mean()
    d_frozen = all(not p.requires_grad for p in model.netD.parameters())
    values = {"gan_losses": torch.tensor(gan_losses), "lrs": torch.tensor(lrs), "fake": fake[0, 0],
              "l1": l1, "d_frozen": d_frozen, "d_has_grad": model.netD.model[0].weight.grad,
              "g_bias": model.netG.model.model[3].bias}
    return {"losses": losses, "values": values, "initial_state": initial}
