"""Continual learning with Elastic Weight Consolidation as the EWC tutorials (Kirkpatrick et
al.'s recipe, the moskomule/ewc.pytorch and Avalanche-style reimplementations) write it in plain
PyTorch: an MLP trained on task A, then the diagonal Fisher from the squared gradients of each
sample's log-likelihood (a dict of tensors keyed by parameter name, `p.grad.detach() ** 2`
averaged over samples) and a copy of the task-A weights; task B's loss adds the penalty
`lam / 2 * sum(F[n] * (p - p_old[n]) ** 2)`. A copy fine-tuned on B without the penalty shows the
forgetting EWC prevents; accuracy on both tasks. The training steps are the compiled
functions."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_task(generator, direction, centre, n=128):
    """Points in 6-D around `centre`, labelled by the side of a hyperplane through it."""
    x = torch.randn(n, 6, generator=generator) + centre
    y = ((x - centre) @ direction > 0.2).long()
    return x, y


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean()


def diagonal_fisher(model, x, y):
    """E[(d log p(y|x) / d theta)^2] over the samples, one backward per sample."""
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for i in range(len(x)):
        model.zero_grad()
        log_prob = F.log_softmax(model(x[i:i + 1]), dim=1)[0, y[i]]
        log_prob.backward()
        for n, p in model.named_parameters():
            fisher[n] += p.grad.detach() ** 2 / len(x)
    model.train()
    return fisher


def main(seed=0, compile=False, initial_state=None, lam=100.0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(4)
    xa, ya = make_task(generator, torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 0.0]),
                       torch.zeros(6))
    xb, yb = make_task(generator, torch.tensor([0.0, -1.0, 1.0, 1.0, 0.0, 0.0]),
                       torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 3.0]))
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def task_a_step(x, y):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        task_a_step = torch.compile(task_a_step)
    losses = []
    for epoch in range(6):
        for x, y in zip(xa.split(32), ya.split(32)):
            losses.append(task_a_step(x, y).item())
    acc_a_before = accuracy(model, xa, ya)

    fisher = diagonal_fisher(model, xa, ya)
    p_old = {n: p.detach().clone() for n, p in model.named_parameters()}
    naive = copy.deepcopy(model)

    def ewc_penalty(net):
        penalty = 0.0
        for n, p in net.named_parameters():
            penalty = penalty + (fisher[n] * (p - p_old[n]) ** 2).sum()
        return penalty

    def make_task_b_step(net, use_ewc):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

        def task_b_step(x, y):
            ce = F.cross_entropy(net(x), y)
            loss = ce + lam / 2 * ewc_penalty(net) if use_ewc else ce
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return torch.compile(task_b_step) if compile else task_b_step

    ewc_step = make_task_b_step(model, True)
    naive_step = make_task_b_step(naive, False)
    for epoch in range(6):
        for x, y in zip(xb.split(32), yb.split(32)):
            losses.append(ewc_step(x, y).item())
            losses.append(naive_step(x, y).item())

    values = {"fisher_w1": fisher["0.weight"], "fisher_b2": fisher["2.bias"],
              "fisher_total": sum(f.sum() for f in fisher.values()),
              "acc_a_before": acc_a_before, "acc_a_ewc": accuracy(model, xa, ya),
              "acc_b_ewc": accuracy(model, xb, yb), "acc_a_naive": accuracy(naive, xa, ya),
              "acc_b_naive": accuracy(naive, xb, yb),
              "penalty_ewc": ewc_penalty(model).detach(),
              "penalty_naive": ewc_penalty(naive).detach()}
    return {"losses": losses, "values": values, "initial_state": initial}
