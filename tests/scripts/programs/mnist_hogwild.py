"""pytorch/examples mnist_hogwild: one model in shared memory (`model.share_memory()`), trained
by several `torch.multiprocessing` processes at once, each with its own seed, DataLoader and
SGD optimizer, then tested in the parent, which sees the children's updates. Synthetic 28x28
images; processes are forked (the example spawns them, which re-imports the script: the
harness's `import torch` rebinding does not reach a spawned child). Each child writes its
losses into a shared tensor, so the parent can report them."""
import argparse
import os

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import TensorDataset


class Net(nn.Module):
    def __init__(self, dropout=True):
        super().__init__()
        self.dropout = dropout
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(p=0.5 if dropout else 0.0)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training and self.dropout)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def train(rank, args, model, device, dataset, dataloader_kwargs, loss_log):
    torch.manual_seed(args.seed + rank)
    train_loader = torch.utils.data.DataLoader(dataset, **dataloader_kwargs)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            optimizer.zero_grad()
            output = model(data.to(device))
            loss = F.nll_loss(output, target.to(device))
            loss.backward()
            optimizer.step()
            loss_log[rank, step] = loss.item()
            step += 1
            if batch_idx % args.log_interval == 0 and args.verbose:
                print('{}\tTrain Epoch: {} [{}/{}]\tLoss: {:.6f}'.format(
                    os.getpid(), epoch, batch_idx * len(data), len(train_loader.dataset),
                    loss.item()))


def test(args, model, device, dataset, dataloader_kwargs):
    torch.manual_seed(args.seed)
    test_loader = torch.utils.data.DataLoader(dataset, **dataloader_kwargs)
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data.to(device))
            test_loss += F.nll_loss(output, target.to(device), reduction='sum').item()
            pred = output.max(1)[1]
            correct += pred.eq(target.to(device)).sum().item()
    test_loss /= len(test_loader.dataset)
    return test_loss, correct


def synthetic_mnist(rng, n):
    """Digits as blobs: class k lights a band of rows around 2.5k, plus noise."""
    labels = rng.integers(0, 10, size=n)
    images = rng.normal(0, 0.3, size=(n, 1, 28, 28)).astype(np.float32)
    for i, k in enumerate(labels):
        images[i, 0, 2 + 2 * k:6 + 2 * k, 4:24] += 1.5
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def main(seed=0, compile=False, initial_state=None, num_processes=1, dropout=True):
    parser = argparse.ArgumentParser()
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--momentum', type=float, default=0.5)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--log-interval', type=int, default=2)
    parser.add_argument('--num-processes', type=int, default=2)
    parser.add_argument('--verbose', action='store_true', default=False)
    args = parser.parse_args(['--seed', str(seed + 1), '--num-processes', str(num_processes)])
    device = torch.device("cpu")
    rng = np.random.default_rng(seed)
    dataset1, dataset2 = synthetic_mnist(rng, 96), synthetic_mnist(rng, 48)
    kwargs = {'batch_size': args.batch_size, 'shuffle': True}

    torch.manual_seed(args.seed)
    ctx = mp.get_context("fork")
    model = Net(dropout).to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.share_memory()
    steps = args.epochs * len(dataset1) // args.batch_size
    loss_log = torch.zeros(args.num_processes, steps).share_memory_()

    processes = []
    for rank in range(args.num_processes):
        p = ctx.Process(target=train, args=(rank, args, model, device, dataset1, kwargs,
                                            loss_log))
        p.start()
        processes.append(p)
    for p in processes:
        p.join()
    test_loss, correct = test(args, model, device, dataset2, kwargs)
    values = {"exitcodes": ",".join(str(p.exitcode) for p in processes),
              "shared": model.fc1.weight.is_shared(), "correct": correct,
              "changed": not torch.equal(model.fc2.weight, initial["fc2.weight"])}
    return {"losses": loss_log.flatten().tolist(), "test_loss": test_loss, "values": values,
            "initial_state": initial}
