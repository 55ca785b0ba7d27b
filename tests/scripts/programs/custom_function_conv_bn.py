"""The fusing-convolution-and-batch-norm-with-a-custom-Function tutorial: a conv2d Function
whose backward is a conv2d of transposed tensors and a conv_transpose2d (@once_differentiable),
a training-mode batch norm Function with a hand-derived backward written with in-place updates,
and the two fused into one Function that saves only the conv's input and recomputes the conv in
backward; each checked with gradcheck in float64; then an MNIST-style net with the fused layers
and one with nn.Conv2d + nn.BatchNorm2d(affine=False, track_running_stats=False), trained with
Adadelta and StepLR, evaluated under inference_mode. The images are synthetic."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.autograd.function import once_differentiable
from torch.optim.lr_scheduler import StepLR


def convolution_backward(grad_out, X, weight):
    grad_weight = F.conv2d(X.transpose(0, 1), grad_out.transpose(0, 1)).transpose(0, 1)
    grad_X = F.conv_transpose2d(grad_out, weight)
    return grad_X, grad_weight


class Conv2D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, weight):
        ctx.save_for_backward(X, weight)
        return F.conv2d(X, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        X, weight = ctx.saved_tensors
        return convolution_backward(grad_out, X, weight)


def per_channel(t):
    return t[None, :, None, None]


def batch_norm_backward(grad_out, X, sum, sqrt_var, N, eps):
    """d/dX of (X - mean) / (sqrt(unbiased var) + eps), with as few full-size buffers as
    possible: one, updated in place."""
    tmp = -((X - per_channel(sum) / N) * grad_out).sum(dim=(0, 2, 3))
    d_denom = tmp / (sqrt_var + eps) ** 2
    d_var = d_denom / (2 * sqrt_var)
    d_mean_dx = grad_out / per_channel(sqrt_var + eps)
    d_mean_dx = per_channel(-d_mean_dx.sum(dim=(0, 2, 3)) / N)
    grad_input = X * per_channel(d_var * N)
    grad_input += per_channel(-d_var * sum)
    grad_input *= 2 / ((N - 1) * N)
    grad_input += d_mean_dx
    grad_input *= per_channel(sqrt_var + eps)
    grad_input += grad_out
    grad_input /= per_channel(sqrt_var + eps)
    return grad_input


def batch_norm_statistics(ctx, X, eps):
    sum = X.sum(dim=(0, 2, 3))
    var = X.var(unbiased=True, dim=(0, 2, 3))
    N = X.numel() / X.size(1)
    sqrt_var = torch.sqrt(var)
    ctx.eps, ctx.sum, ctx.N, ctx.sqrt_var = eps, sum, N, sqrt_var
    return sum / N, sqrt_var + eps


class BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, eps=1e-3):
        ctx.save_for_backward(X)
        mean, denom = batch_norm_statistics(ctx, X, eps)
        return (X - per_channel(mean)) / per_channel(denom)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        X, = ctx.saved_tensors
        return batch_norm_backward(grad_out, X, ctx.sum, ctx.sqrt_var, ctx.N, ctx.eps), None


class FusedConvBN2DFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, conv_weight, eps=1e-3):
        assert X.ndim == 4
        ctx.save_for_backward(X, conv_weight)      # the conv's output is recomputed
        X = F.conv2d(X, conv_weight)
        mean, denom = batch_norm_statistics(ctx, X, eps)
        out = X - per_channel(mean)
        out /= per_channel(denom)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        X, conv_weight = ctx.saved_tensors
        X_conv_out = F.conv2d(X, conv_weight)
        grad_out = batch_norm_backward(grad_out, X_conv_out, ctx.sum, ctx.sqrt_var, ctx.N,
                                       ctx.eps)
        grad_X, grad_weight = convolution_backward(grad_out, X, conv_weight)
        return grad_X, grad_weight, None


class FusedConvBN(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, eps=1e-3, device=None,
                 dtype=None):
        super(FusedConvBN, self).__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.conv_weight = nn.Parameter(torch.empty(*shape, **factory_kwargs))
        self.eps = eps
        self.reset_parameters()

    def forward(self, X):
        return FusedConvBN2DFunction.apply(X, self.conv_weight, self.eps)

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))


class Net(nn.Module):
    def __init__(self, fused=True, dropout=0.5):
        super(Net, self).__init__()
        self.fused = fused
        if fused:
            self.convbn1 = FusedConvBN(1, 4, 3)
            self.convbn2 = FusedConvBN(4, 8, 3)
        else:
            self.conv1 = nn.Conv2d(1, 4, 3, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(4, affine=False, track_running_stats=False)
            self.conv2 = nn.Conv2d(4, 8, 3, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(8, affine=False, track_running_stats=False)
        self.fc1 = nn.Linear(128, 32)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.convbn1(x) if self.fused else self.bn1(self.conv1(x)))
        x = F.relu(self.convbn2(x) if self.fused else self.bn2(self.conv2(x)))
        x = F.relu(F.max_pool2d(x, 2))
        x = F.relu(self.dropout(self.fc1(x.flatten(1))))
        return F.log_softmax(self.fc2(x), dim=1)


def synthetic_digits(n, seed):
    """12x12 images whose class sets which 2x2 block of a 5x2 grid is bright."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 10, (n,), generator=g)
    images = 0.3 * torch.randn(n, 1, 12, 12, generator=g)
    for i, c in enumerate(target.tolist()):
        r, col = 2 * (c // 2), 2 + 6 * (c % 2)
        images[i, 0, r:r + 2, col:col + 2] += 2.0
    return images, target


def test(model, data):
    model.eval()
    test_loss, correct = 0, 0
    with torch.inference_mode():
        for x, target in data:
            output = model(x)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            correct += output.argmax(dim=1, keepdim=True).eq(target.view(-1, 1)).sum().item()
    n = sum(len(t) for _, t in data)
    return test_loss / n, correct


def main(seed=0, compile=False, initial_state=None, dropout=0.5, epochs=2):
    torch.manual_seed(seed)
    values = {}
    weight = torch.rand(3, 2, 3, 3, requires_grad=True, dtype=torch.double)
    X = torch.rand(4, 2, 5, 5, requires_grad=True, dtype=torch.double)
    values["conv_gradcheck"] = torch.autograd.gradcheck(Conv2D.apply, (X, weight))
    a = torch.rand(2, 2, 3, 4, requires_grad=True, dtype=torch.double)
    values["bn_gradcheck"] = torch.autograd.gradcheck(BatchNorm.apply, (a,), fast_mode=False)
    X = torch.rand(2, 2, 4, 4, requires_grad=True, dtype=torch.double)
    values["fused_gradcheck"] = torch.autograd.gradcheck(FusedConvBN2DFunction.apply, (X, weight))
    try:        # once_differentiable: no graph for a second derivative
        g, = torch.autograd.grad(Conv2D.apply(X, weight).sum(), X, create_graph=True)
        torch.autograd.grad(g.sum(), weight)
        values["once_differentiable_blocks"] = False
    except RuntimeError:
        values["once_differentiable_blocks"] = True

    train = [synthetic_digits(32, seed=100 + i) for i in range(4)]
    held_out = [synthetic_digits(64, seed=99)]
    losses, initial, results = [], {}, {}
    for fused in (True, False):
        torch.manual_seed(123456)
        model = Net(fused=fused, dropout=dropout)
        name = "fused" if fused else "plain"
        if initial_state is not None:
            model.load_state_dict(initial_state[name])
        initial[name] = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = StepLR(optimizer, step_size=1, gamma=0.7)

        def train_step(data, target):
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            return loss

        if compile:
            train_step = torch.compile(train_step)
        for epoch in range(epochs):
            model.train()
            for data, target in train:
                losses.append(train_step(data, target).item())
            results[f"{name}_test_{epoch}"] = test(model, held_out)
            scheduler.step()
    values.update({k: v[0] for k, v in results.items()})
    values["correct"] = ",".join(str(v[1]) for v in results.values())
    return {"losses": losses, "values": values, "initial_state": initial}
