"""Quantisation-aware training as hand-rolled QAT code writes it (the pattern of
torch.ao.quantization's FakeQuantize, written out): an MLP classifier trained in float32 first;
then each Linear wrapped so that its weight goes through a symmetric per-tensor int8 fake
quantiser and its input through an affine uint8 one; the activation ranges are min/max
observers kept as buffers and updated in forward by an exponential moving average (the first
batch copies), scale and zero point computed from them as tensors, and
`torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)` applied with those
tensor qparams; the weights through a hand-written straight-through estimator
`w + (q - w).detach()`. Observers freeze after a few epochs (a Python flag); then fp32 vs
fake-quantised accuracy and the qparams compared with torch.ao.quantization's own
MinMaxObserver on the same data, and torch.ao's FakeQuantize modules (per-channel weights,
calibrated activations) on the first layer. The QAT train step is compiled."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import MinMaxObserver


class EMAMinMax(nn.Module):
    def __init__(self, momentum=0.1, quant_min=0, quant_max=255):
        super().__init__()
        self.momentum = momentum
        self.quant_min, self.quant_max = quant_min, quant_max
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.initialized = False
        self.enabled = True

    def forward(self, x):
        if self.enabled and self.training:
            with torch.no_grad():
                lo, hi = x.min(), x.max()
                if not self.initialized:
                    self.min_val.copy_(lo)
                    self.max_val.copy_(hi)
                    self.initialized = True
                else:
                    self.min_val.lerp_(lo, self.momentum)
                    self.max_val.lerp_(hi, self.momentum)
        return x

    def qparams(self):
        min_neg = torch.clamp(self.min_val, max=0.0)
        max_pos = torch.clamp(self.max_val, min=0.0)
        scale = (max_pos - min_neg) / float(self.quant_max - self.quant_min)
        scale = torch.clamp(scale, min=torch.finfo(torch.float32).eps)
        zero_point = self.quant_min - torch.round(min_neg / scale).to(torch.int32)
        zero_point = torch.clamp(zero_point, self.quant_min, self.quant_max)
        return scale.reshape(1), zero_point.reshape(1)


def ste_quantize_weight(w, bits=8):
    """Symmetric per-tensor fake quantisation with a straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().max().clamp(min=1e-8) / qmax
    q = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    return w + (q - w).detach()


class QATLinear(nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear
        self.act_obs = EMAMinMax()
        self.quantize = True

    def forward(self, x):
        if not self.quantize:
            return self.linear(x)
        x = self.act_obs(x)
        scale, zero_point = self.act_obs.qparams()
        x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
        return F.linear(x, ste_quantize_weight(self.linear.weight), self.linear.bias)


def make_data(rng, n):
    x = rng.standard_normal((n, 8)).astype(np.float32) * np.array(
        [3, 1, 0.5, 2, 1, 1, 0.2, 4], np.float32)
    y = (x[:, 0] + 2 * x[:, 1] - x[:, 3] > 0).astype(np.int64) + (x[:, 7] > 2).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(9)
    x_train, y_train = make_data(rng, 128)
    x_test, y_test = make_data(rng, 64)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 3))
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def accuracy(m):
        m.eval()
        with torch.no_grad():
            acc = (m(x_test).argmax(1) == y_test).float().mean()
        m.train()
        return acc

    losses = []
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(2):                                # float32 training (eager)
        for xb, yb in zip(x_train.split(32), y_train.split(32)):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    fp32_acc = accuracy(model)

    # swap in the QAT wrappers (module surgery) and fine-tune
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            model[i] = QATLinear(m)
    qat_opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        qat_opt.zero_grad()
        loss.backward()
        qat_opt.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    for epoch in range(3):
        if epoch == 2:                                    # freeze the observers
            for m in model.modules():
                if isinstance(m, EMAMinMax):
                    m.enabled = False
        for xb, yb in zip(x_train.split(32), y_train.split(32)):
            losses.append(train_step(xb, yb).item())
    qat_acc = accuracy(model)
    for m in model.modules():
        if isinstance(m, QATLinear):
            m.quantize = False
    float_acc_after = accuracy(model)

    # torch.ao's observer on the first layer's input: the same range rule (min/max, no EMA)
    ao = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    ao(x_train)
    ao_scale, ao_zp = ao.calculate_qparams()
    mine = EMAMinMax(momentum=1.0)
    mine(x_train)
    my_scale, my_zp = mine.qparams()
    # torch.ao's FakeQuantize modules on the first layer as initialised (the same numbers in
    # both runs: trained weights a rounding apart could round to neighbouring levels):
    # per-channel int8 weights, uint8 inputs calibrated on the training set, then the observer
    # frozen by model.apply
    w_fq = torch.ao.quantization.default_per_channel_weight_fake_quant()
    a_fq = torch.ao.quantization.default_fake_quant()
    with torch.no_grad():
        a_fq(x_train)
        a_fq.apply(torch.ao.quantization.disable_observer)
        fq_hidden = F.linear(a_fq(x_test), w_fq(initial["0.weight"]), initial["0.bias"])
    w = model[2].linear.weight.detach().clone().requires_grad_(True)
    ste_quantize_weight(w).pow(2).sum().backward()
    values = {"fp32_acc": fp32_acc, "qat_acc": qat_acc, "float_acc_after": float_acc_after,
              "obs_min": model[0].act_obs.min_val.clone(),
              "obs_max": model[2].act_obs.max_val.clone(),
              "ao_scale": ao_scale, "ao_zp": ao_zp, "my_scale": my_scale, "my_zp": my_zp,
              "ste_grad": w.grad, "fq_hidden": fq_hidden, "w_fq_scale": w_fq.scale,
              "a_fq_scale": a_fq.scale, "a_fq_zero_point": a_fq.zero_point,
              "fq_keys": ",".join(w_fq.state_dict()),
              "fq_out": torch.fake_quantize_per_tensor_affine(x_test[:4], my_scale, my_zp, 0,
                                                              255)}
    return {"losses": losses, "values": values, "initial_state": initial}
