"""ConvLSTM video prediction as the Moving-MNIST repos write it (ndrplz's ConvLSTM cell and the
encoder-forecaster loops around it): one `nn.Conv2d` over the concatenated input and hidden state
producing the four gates, cut apart by `torch.split`, a stack of cells unrolled over time by a
Python loop, the next frame read out by a 1x1 convolution and `torch.sigmoid`, the predictions
gathered by `torch.stack(outputs, dim=1)`; the loss MSE plus `F.l1_loss`; while forecasting, each
step feeds back either the true frame or the model's own prediction, chosen by scheduled sampling
(`torch.rand(()) < p`, p decaying each epoch); Adam with `StepLR`. Frames are squares moving and
bouncing on a 12x12 canvas. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvLSTMCell(nn.Module):
    def __init__(self, input_dim, hidden_dim, kernel_size, bias=True):
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.padding = kernel_size[0] // 2, kernel_size[1] // 2
        self.conv = nn.Conv2d(in_channels=self.input_dim + self.hidden_dim,
                              out_channels=4 * self.hidden_dim, kernel_size=kernel_size,
                              padding=self.padding, bias=bias)

    def forward(self, input_tensor, cur_state):
        h_cur, c_cur = cur_state
        combined = torch.cat([input_tensor, h_cur], dim=1)
        combined_conv = self.conv(combined)
        cc_i, cc_f, cc_o, cc_g = torch.split(combined_conv, self.hidden_dim, dim=1)
        i = torch.sigmoid(cc_i)
        f = torch.sigmoid(cc_f)
        o = torch.sigmoid(cc_o)
        g = torch.tanh(cc_g)
        c_next = f * c_cur + i * g
        h_next = o * torch.tanh(c_next)
        return h_next, c_next

    def init_hidden(self, batch_size, image_size):
        height, width = image_size
        return (torch.zeros(batch_size, self.hidden_dim, height, width,
                            device=self.conv.weight.device),
                torch.zeros(batch_size, self.hidden_dim, height, width,
                            device=self.conv.weight.device))


class Seq2SeqConvLSTM(nn.Module):
    def __init__(self, hidden_dims=(8, 8)):
        super().__init__()
        dims = [1] + list(hidden_dims)
        self.cells = nn.ModuleList(ConvLSTMCell(dims[i], dims[i + 1], (3, 3))
                                   for i in range(len(hidden_dims)))
        self.readout = nn.Conv2d(hidden_dims[-1], 1, kernel_size=1)

    def step(self, frame, states):
        x = frame
        for i, cell in enumerate(self.cells):
            states[i] = cell(x, states[i])
            x = states[i][0]
        return torch.sigmoid(self.readout(x))

    def forward(self, inputs, targets, teacher_forcing):
        batch, _, _, height, width = inputs.size()
        states = [cell.init_hidden(batch, (height, width)) for cell in self.cells]
        for t in range(inputs.size(1) - 1):
            self.step(inputs[:, t], states)
        frame = inputs[:, -1]
        outputs = []
        for t in range(targets.size(1)):
            prediction = self.step(frame, states)
            outputs.append(prediction)
            use_truth = torch.rand(()) < teacher_forcing
            frame = torch.where(use_truth, targets[:, t], prediction)
        return torch.stack(outputs, dim=1)


def moving_squares(rng, n, frames=7, size=12, square=3):
    """Each clip: one square moving at a constant velocity, bouncing off the edges."""
    video = np.zeros((n, frames, 1, size, size), dtype=np.float32)
    for k in range(n):
        pos = rng.uniform(0, size - square, 2)
        vel = rng.uniform(-1.5, 1.5, 2)
        for t in range(frames):
            for d in range(2):
                if not 0 <= pos[d] + vel[d] <= size - square:
                    vel[d] = -vel[d]
                pos[d] += vel[d]
            r, c = int(round(pos[0])), int(round(pos[1]))
            video[k, t, 0, r:r + square, c:c + square] = 1.0
    return torch.from_numpy(video)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(3)
    train = moving_squares(rng, 16)
    test = moving_squares(rng, 6)
    model = Seq2SeqConvLSTM()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    n_in = 3

    def train_step(clip, teacher_forcing):
        inputs, targets = clip[:, :n_in], clip[:, n_in:]
        predictions = model(inputs, targets, teacher_forcing)
        loss = F.mse_loss(predictions, targets) + 0.1 * F.l1_loss(predictions, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, ratios = [], []
    for epoch in range(3):
        teacher_forcing = max(0.0, 1.0 - 0.4 * epoch)
        ratios.append(teacher_forcing)
        perm = torch.randperm(train.size(0))
        for idx in perm.split(8):
            losses.append(train_step(train[idx], teacher_forcing).item())
        scheduler.step()

    with torch.no_grad():
        predictions = model(test[:, :n_in], test[:, n_in:], 0.0)
        test_mse = F.mse_loss(predictions, test[:, n_in:])
    values = {"predictions": predictions, "test_mse": test_mse, "ratios": torch.tensor(ratios),
              "lr": torch.tensor(scheduler.get_last_lr())}
    return {"losses": losses, "values": values, "initial_state": initial}
