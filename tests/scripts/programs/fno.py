"""A 2-D Fourier neural operator as the neuraloperator papers' reference code writes it: a
lifting layer, spectral convolutions (`torch.fft.rfft2`, complex weights as `torch.cfloat`
parameters multiplied into the lowest modes by `torch.einsum`, `torch.fft.irfft2` back to the
grid) beside 1x1 convolutions, GELU, a projection, a relative L2 loss, Adam with StepLR. The
task maps a smooth random field to the solution of a Poisson-like equation solved spectrally
in NumPy. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SpectralConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, modes1, modes2):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes1 = modes1
        self.modes2 = modes2
        self.scale = 1 / (in_channels * out_channels)
        self.weights1 = nn.Parameter(self.scale * torch.rand(
            in_channels, out_channels, modes1, modes2, dtype=torch.cfloat))
        self.weights2 = nn.Parameter(self.scale * torch.rand(
            in_channels, out_channels, modes1, modes2, dtype=torch.cfloat))

    def compl_mul2d(self, input, weights):
        # (batch, in_channel, x, y), (in_channel, out_channel, x, y) -> (batch, out_channel, x, y)
        return torch.einsum("bixy,ioxy->boxy", input, weights)

    def forward(self, x):
        batchsize = x.shape[0]
        x_ft = torch.fft.rfft2(x)
        out_ft = torch.zeros(batchsize, self.out_channels, x.size(-2), x.size(-1) // 2 + 1,
                             dtype=torch.cfloat, device=x.device)
        out_ft[:, :, :self.modes1, :self.modes2] = \
            self.compl_mul2d(x_ft[:, :, :self.modes1, :self.modes2], self.weights1)
        out_ft[:, :, -self.modes1:, :self.modes2] = \
            self.compl_mul2d(x_ft[:, :, -self.modes1:, :self.modes2], self.weights2)
        return torch.fft.irfft2(out_ft, s=(x.size(-2), x.size(-1)))


class FNO2d(nn.Module):
    def __init__(self, modes1, modes2, width):
        super().__init__()
        self.fc0 = nn.Linear(3, width)          # (a(x, y), x, y)
        self.conv0 = SpectralConv2d(width, width, modes1, modes2)
        self.conv1 = SpectralConv2d(width, width, modes1, modes2)
        self.w0 = nn.Conv2d(width, width, 1)
        self.w1 = nn.Conv2d(width, width, 1)
        self.fc1 = nn.Linear(width, 32)
        self.fc2 = nn.Linear(32, 1)

    def get_grid(self, shape, device):
        batchsize, size_x, size_y = shape[0], shape[1], shape[2]
        gridx = torch.tensor(np.linspace(0, 1, size_x), dtype=torch.float)
        gridx = gridx.reshape(1, size_x, 1, 1).repeat([batchsize, 1, size_y, 1])
        gridy = torch.tensor(np.linspace(0, 1, size_y), dtype=torch.float)
        gridy = gridy.reshape(1, 1, size_y, 1).repeat([batchsize, size_x, 1, 1])
        return torch.cat((gridx, gridy), dim=-1).to(device)

    def forward(self, x):
        grid = self.get_grid(x.shape, x.device)
        x = torch.cat((x, grid), dim=-1)
        x = self.fc0(x)
        x = x.permute(0, 3, 1, 2)
        x = F.gelu(self.conv0(x) + self.w0(x))
        x = self.conv1(x) + self.w1(x)
        x = x.permute(0, 2, 3, 1)
        x = F.gelu(self.fc1(x))
        return self.fc2(x)


class LpLoss:
    """Relative L2 error, summed over the batch, as the FNO code's utilities define it."""

    def __init__(self, p=2, size_average=True):
        self.p = p
        self.size_average = size_average

    def __call__(self, x, y):
        num_examples = x.size()[0]
        diff_norms = torch.norm(x.reshape(num_examples, -1) - y.reshape(num_examples, -1),
                                self.p, 1)
        y_norms = torch.norm(y.reshape(num_examples, -1), self.p, 1)
        if self.size_average:
            return torch.mean(diff_norms / y_norms)
        return torch.sum(diff_norms / y_norms)


def make_data(n, s, rng):
    """Smooth random forcing a on an s x s periodic grid and u solving -lap(u) + u = a."""
    k = np.fft.fftfreq(s, d=1.0 / s)
    kx, ky = np.meshgrid(k, k, indexing="ij")
    decay = 1.0 / (1.0 + kx ** 2 + ky ** 2) ** 1.5
    noise = rng.standard_normal((n, s, s)) + 1j * rng.standard_normal((n, s, s))
    a = np.real(np.fft.ifft2(noise * decay)) * s
    u = np.real(np.fft.ifft2(np.fft.fft2(a) / (1.0 + 4 * np.pi ** 2 * (kx ** 2 + ky ** 2) / s)))
    return a.astype(np.float32)[..., None], u.astype(np.float32)[..., None]


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(3)
    s = 16
    a_train, u_train = make_data(8, s, rng)
    a_test, u_test = make_data(4, s, rng)
    x_train, y_train = torch.from_numpy(a_train), torch.from_numpy(u_train)
    x_test, y_test = torch.from_numpy(a_test), torch.from_numpy(u_test)

    model = FNO2d(modes1=4, modes2=4, width=8)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    myloss = LpLoss(size_average=False)

    def train_step(x, y):
        optimizer.zero_grad()
        out = model(x)
        loss = myloss(out.view(x.shape[0], -1), y.view(x.shape[0], -1))
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for i in range(0, 8, 4):
            losses.append(train_step(x_train[i:i + 4], y_train[i:i + 4]).item())
            scheduler.step()

    model.eval()
    with torch.no_grad():
        pred = model(x_test)
        test_l2 = myloss(pred.view(4, -1), y_test.view(4, -1)).item()
        spectrum = torch.fft.rfft2(pred[..., 0]).abs()[:, :4, :4]
    values = {"test_l2": test_l2, "pred": pred, "spectrum": spectrum,
              "weights1": torch.view_as_real(model.conv0.weights1.detach())}
    return {"losses": losses, "values": values, "initial_state": initial}
