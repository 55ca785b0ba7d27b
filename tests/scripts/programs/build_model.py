"""Build-the-model tutorial: nn.Flatten, nn.Linear, nn.ReLU, nn.Sequential, nn.Softmax, an
nn.Module's named_parameters; values from fixed weights so both libraries must agree."""
import torch
from torch import nn


class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(6 * 6, 16),
            nn.ReLU(),
            nn.Linear(16, 16),
            nn.ReLU(),
            nn.Linear(16, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def main(seed=0, compile=False, initial_state=None):
    model = NeuralNetwork()
    with torch.no_grad():
        for i, param in enumerate(model.parameters()):
            n = param.numel()
            param.copy_(torch.linspace(-0.5, 0.5, n).reshape(param.shape) * (-1) ** i)
    X = torch.linspace(0, 1, 3 * 36).reshape(3, 6, 6)
    logits = model(X)
    pred_probab = nn.Softmax(dim=1)(logits)
    y_pred = pred_probab.argmax(1)
    input_image = torch.linspace(-1, 1, 3 * 6 * 6).reshape(3, 6, 6)
    flatten = nn.Flatten()
    flat_image = flatten(input_image)
    layer1 = nn.Linear(in_features=36, out_features=20)
    with torch.no_grad():
        layer1.weight.fill_(0.01)
        layer1.bias.fill_(-0.1)
    hidden1 = layer1(flat_image)
    hidden1 = nn.ReLU()(hidden1)
    values = {"logits": logits, "probab": pred_probab, "y_pred": y_pred,
              "flat_shape": list(flat_image.size()), "hidden1": hidden1,
              "names": ",".join(name for name, _ in model.named_parameters()),
              "sizes": str([list(p.size()) for _, p in model.named_parameters()])}
    return {"losses": [], "values": values}


if __name__ == "__main__":
    print(main())
