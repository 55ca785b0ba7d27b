"""Forward-forward training (pytorch/examples mnist_forward_forward): Linear subclasses that
own an Adam each, goodness = mean of squared activations, positive/negative data made by
overlaying the label on the input."""
import numpy as np
import torch
import torch.nn as nn
from torch.optim import Adam


def overlay_y_on_x(x, y, classes=10):
    x_ = x.clone()
    x_[:, :classes] *= 0.0
    x_[range(x.shape[0]), y] = x.max()
    return x_


class Layer(nn.Linear):
    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None,
                 lr=0.03, threshold=2.0, epochs=10):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.relu = torch.nn.ReLU()
        self.opt = Adam(self.parameters(), lr=lr)
        self.threshold = threshold
        self.num_epochs = epochs
        self.losses = []

    def forward(self, x):
        x_direction = x / (x.norm(2, 1, keepdim=True) + 1e-4)
        return self.relu(torch.mm(x_direction, self.weight.T) + self.bias.unsqueeze(0))

    def train(self, x_pos, x_neg):
        for i in range(self.num_epochs):
            g_pos = self.forward(x_pos).pow(2).mean(1)
            g_neg = self.forward(x_neg).pow(2).mean(1)
            loss = torch.log1p(
                torch.exp(torch.cat([-g_pos + self.threshold, g_neg - self.threshold]))
            ).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.losses.append(loss.item())
        return self.forward(x_pos).detach(), self.forward(x_neg).detach()


class Net(torch.nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = []
        for d in range(len(dims) - 1):
            self.layers = self.layers + [Layer(dims[d], dims[d + 1])]

    def predict(self, x):
        goodness_per_label = []
        for label in range(10):
            h = overlay_y_on_x(x, label)
            goodness = []
            for layer in self.layers:
                h = layer(h)
                goodness = goodness + [h.pow(2).mean(1)]
            goodness_per_label += [sum(goodness).unsqueeze(1)]
        goodness_per_label = torch.cat(goodness_per_label, 1)
        return goodness_per_label.argmax(1)

    def train(self, x_pos, x_neg):
        h_pos, h_neg = x_pos, x_neg
        for i, layer in enumerate(self.layers):
            h_pos, h_neg = layer.train(h_pos, h_neg)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(5).normal(size=(10, 40)).astype(np.float32)
    y_np = rng.integers(0, 10, 128)
    features = np.abs(centers[y_np] + 0.5 * rng.normal(size=(128, 40))).astype(np.float32)
    x = torch.from_numpy(features)
    y = torch.from_numpy(y_np)
    net = Net([40, 32, 32])
    if initial_state is not None:
        for layer, state in zip(net.layers, initial_state.values()):
            layer.load_state_dict(state)
    initial = {str(i): {k: v.clone() for k, v in layer.state_dict().items()}
               for i, layer in enumerate(net.layers)}
    x_pos = overlay_y_on_x(x, y)
    y_neg = torch.from_numpy((y_np + rng.integers(1, 10, 128)) % 10)
    x_neg = overlay_y_on_x(x, y_neg)
    net.train(x_pos, x_neg)
    train_error = 1.0 - net.predict(x).eq(y).float().mean().item()
    losses = [loss for layer in net.layers for loss in layer.losses]
    return {"losses": losses, "train_error": train_error, "initial_state": initial}


if __name__ == "__main__":
    print(main())
