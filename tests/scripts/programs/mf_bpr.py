"""A matrix-factorization recommender trained with BPR as the implicit-feedback repos write
it: user and item `nn.Embedding(sparse=True)` tables (optimized by `SparseAdam`) plus a dense
item bias and a tiny MLP gate (optimized by `Adam`), negatives drawn with `torch.randint` for
each (user, positive item) pair, the loss `-F.logsigmoid(pos - neg).mean()` with L2 on the
looked-up rows, and a hit-rate@5 evaluation by `topk` over all items with the training
positives masked out by `index_put_`. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class BPRMF(nn.Module):
    def __init__(self, n_users, n_items, dim=8):
        super().__init__()
        self.user = nn.Embedding(n_users, dim, sparse=True)
        self.item = nn.Embedding(n_items, dim, sparse=True)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.gate = nn.Linear(dim, dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def score(self, u, i):
        eu = self.user(u)
        ei = self.item(i)
        eu = eu * torch.sigmoid(self.gate(eu))
        return (eu * ei).sum(-1) + self.item_bias[i], eu, ei

    def full_scores(self):
        eu = self.user.weight * torch.sigmoid(self.gate(self.user.weight))
        return eu @ self.item.weight.t() + self.item_bias


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(12)
    n_users, n_items = 20, 30
    # each user likes items of their own "genre" (user % 3 == item % 3)
    pairs = [(u, i) for u in range(n_users) for i in range(n_items)
             if u % 3 == i % 3 and rng.random() < 0.5]
    pairs = torch.tensor(pairs)
    pairs = pairs[torch.from_numpy(rng.permutation(len(pairs)))]

    model = BPRMF(n_users, n_items)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    sparse_params = list(model.user.parameters()) + list(model.item.parameters())
    dense_params = [model.item_bias] + list(model.gate.parameters())
    sparse_opt = torch.optim.SparseAdam(sparse_params, lr=0.05)
    dense_opt = torch.optim.Adam(dense_params, lr=0.01)
    reg = 1e-3

    def train_step(users, pos):
        neg = torch.randint(0, n_items, pos.shape)
        pos_score, eu, ep = model.score(users, pos)
        neg_score, _, en = model.score(users, neg)
        loss = -F.logsigmoid(pos_score - neg_score).mean()
        loss = loss + reg * (eu.pow(2).sum() + ep.pow(2).sum() + en.pow(2).sum()) / len(users)
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    batch = 25
    usable = len(pairs) // batch * batch
    for epoch in range(3):
        for b in pairs[:usable].split(batch):
            losses.append(train_step(b[:, 0], b[:, 1]).item())

    with torch.no_grad():
        scores = model.full_scores()
        held = scores.clone()
        held.index_put_((pairs[:, 0], pairs[:, 1]), torch.tensor(float("-inf")))
        top = held.topk(5, dim=1).indices
        genre_hits = (top % 3 == torch.arange(n_users)[:, None] % 3).float().mean()
    values = {"user_w": model.user.weight.detach().clone(),
              "item_w": model.item.weight.detach().clone(),
              "bias": model.item_bias.detach().clone(), "top": top,
              "grad_is_sparse": bool(model.user.weight.grad.is_sparse),
              "genre_hits": genre_hits}
    return {"losses": losses, "values": values, "initial_state": initial}
