"""60-minute blitz, neural networks: LeNet, num_flat_features, backward with a given gradient,
MSELoss, a manual SGD update, then optim.SGD."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, input):
        c1 = F.relu(self.conv1(input))
        s2 = F.max_pool2d(c1, (2, 2))
        c3 = F.relu(self.conv2(s2))
        s4 = F.max_pool2d(c3, 2)
        s4 = torch.flatten(s4, 1)
        f5 = F.relu(self.fc1(s4))
        f6 = F.relu(self.fc2(f5))
        output = self.fc3(f6)
        return output


def main(seed=0, compile=False, initial_state=None, steps=5):
    torch.manual_seed(seed)
    net = Net()
    if initial_state is not None:
        net.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    params = list(net.parameters())
    shapes = [tuple(p.size()) for p in params]
    g = torch.Generator().manual_seed(0)
    input = torch.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
    out = net(input)
    net.zero_grad()
    out.backward(torch.linspace(0, 1, 10).reshape(1, 10))
    conv1_grad = net.conv1.bias.grad.clone()
    output = net(input)
    target = torch.arange(10, dtype=torch.float32).view(1, -1) / 10
    criterion = nn.MSELoss()
    loss = criterion(output, target)
    net.zero_grad()
    loss.backward()
    learning_rate = 0.01
    for f in net.parameters():
        f.data.sub_(f.grad.data * learning_rate)
    optimizer = optim.SGD(net.parameters(), lr=0.01)

    def step(input, target):
        optimizer.zero_grad()
        output = net(input)
        loss = criterion(output, target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        step = torch.compile(step)
    losses = [loss.item()] + [step(input, target).item() for _ in range(steps)]
    return {"losses": losses, "initial_state": initial, "shapes": shapes,
            "conv1_grad": conv1_grad.tolist(), "grad_fn": type(loss.grad_fn).__name__,
            "generator": g.initial_seed()}


if __name__ == "__main__":
    print(main())
