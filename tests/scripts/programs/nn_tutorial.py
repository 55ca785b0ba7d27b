""""What is torch.nn really?" tutorial: logistic regression from scratch (manual weights,
log_softmax, nll, accuracy), then refactored step by step onto F.cross_entropy, nn.Module,
nn.Linear, optim, TensorDataset/DataLoader and a CNN built from nn.Sequential with a Lambda
layer; synthetic 8x8 digits instead of MNIST."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset


def log_softmax(x):
    return x - x.exp().sum(-1).log().unsqueeze(-1)


def nll(input, target):
    return -input[range(target.shape[0]), target].mean()


def accuracy(out, yb):
    preds = torch.argmax(out, dim=1)
    return (preds == yb).float().mean()


class Mnist_Logistic(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, xb):
        return self.lin(xb)


class Lambda(nn.Module):
    def __init__(self, func):
        super().__init__()
        self.func = func

    def forward(self, x):
        return self.func(x)


def loss_batch(model, loss_func, xb, yb, opt=None):
    loss = loss_func(model(xb), yb)
    if opt is not None:
        loss.backward()
        opt.step()
        opt.zero_grad()
    return loss.item(), len(xb)


def fit(epochs, model, loss_func, opt, train_dl, valid_dl, losses):
    for epoch in range(epochs):
        model.train()
        for xb, yb in train_dl:
            losses.append(loss_batch(model, loss_func, xb, yb, opt)[0])
        model.eval()
        with torch.no_grad():
            results = [loss_batch(model, loss_func, xb, yb) for xb, yb in valid_dl]
        nums = [n for _, n in results]
        val_loss = np.sum([l * n for l, n in results]) / np.sum(nums)
    return val_loss


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(8).normal(size=(10, 64)).astype(np.float32)
    y_np = rng.integers(0, 10, 192)
    x_np = (centers[y_np] + rng.normal(size=(192, 64))).astype(np.float32)
    x_train, y_train, x_valid, y_valid = map(torch.tensor, (x_np[:128], y_np[:128],
                                                            x_np[128:], y_np[128:]))
    n, c = x_train.shape
    bs, lr = 32, 0.5
    losses = []
    # from scratch
    weights = torch.randn(64, 10) / math.sqrt(64)
    if initial_state is not None:
        weights = initial_state["weights"].clone()
    initial = {"weights": weights.clone()}
    weights.requires_grad_()
    bias = torch.zeros(10, requires_grad=True)

    def model(xb):
        return log_softmax(xb @ weights + bias)

    for epoch in range(2):
        for i in range((n - 1) // bs + 1):
            start_i = i * bs
            end_i = start_i + bs
            xb = x_train[start_i:end_i]
            yb = y_train[start_i:end_i]
            pred = model(xb)
            loss = nll(pred, yb)
            losses.append(loss.item())
            loss.backward()
            with torch.no_grad():
                weights -= weights.grad * lr
                bias -= bias.grad * lr
                weights.grad.zero_()
                bias.grad.zero_()
    scratch_acc = accuracy(model(x_valid), y_valid).item()
    # refactored: cross_entropy, nn.Module, optim, DataLoader
    loss_func = F.cross_entropy
    logistic = Mnist_Logistic()
    if initial_state is not None:
        logistic.load_state_dict(initial_state["logistic"])
    initial["logistic"] = {k: v.clone() for k, v in logistic.state_dict().items()}
    opt = optim.SGD(logistic.parameters(), lr=lr)
    train_dl = DataLoader(TensorDataset(x_train, y_train), batch_size=bs)
    valid_dl = DataLoader(TensorDataset(x_valid, y_valid), batch_size=bs * 2)
    logistic_val = fit(2, logistic, loss_func, opt, train_dl, valid_dl, losses)
    # a CNN with nn.Sequential and a Lambda preprocessing layer
    cnn = nn.Sequential(
        Lambda(lambda x: x.view(-1, 1, 8, 8)),
        nn.Conv2d(1, 8, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 10, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        Lambda(lambda x: x.view(x.size(0), -1)),
    )
    if initial_state is not None:
        cnn.load_state_dict(initial_state["cnn"])
    initial["cnn"] = {k: v.clone() for k, v in cnn.state_dict().items()}
    opt = optim.SGD(cnn.parameters(), lr=0.1, momentum=0.9)
    cnn_val = fit(2, cnn, loss_func, opt, train_dl, valid_dl, losses)
    return {"losses": losses, "scratch_accuracy": scratch_acc, "logistic_val": logistic_val,
            "cnn_val": cnn_val, "initial_state": initial}


if __name__ == "__main__":
    print(main())
