"""Learning to rank as allRank and PT-Ranking write it: a scoring MLP over (query, document)
features shaped (queries, documents, features), ListNet's loss (the cross-entropy between the
softmax of the relevance labels and the log-softmax of the scores over each list), a pairwise
RankNet-style hinge by `F.margin_ranking_loss` over every document pair of a list drawn with
`torch.combinations` and indexed with those index tensors (pairs of equal relevance masked out),
Adam, and NDCG@k for evaluation: documents ordered by `torch.sort(scores, descending=True)`,
their labels by `gather`, gains `2 ** rel - 1`, discounts `1 / torch.log2(rank + 2)`, the ideal
order by `argsort` of the labels. The training step and NDCG@5 are the compiled functions."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def listnet_loss(y_pred, y_true, eps=1e-10):
    preds_smax = F.softmax(y_pred, dim=1)
    true_smax = F.softmax(y_true, dim=1)
    preds_smax = preds_smax + eps
    preds_log = torch.log(preds_smax)
    return torch.mean(-torch.sum(true_smax * preds_log, dim=1))


def pairwise_hinge_loss(y_pred, y_true, pairs, margin=1.0):
    first, second = pairs[:, 0], pairs[:, 1]
    target = torch.sign(y_true[:, first] - y_true[:, second])
    losses = F.margin_ranking_loss(y_pred[:, first], y_pred[:, second], target, margin=margin,
                                   reduction="none")
    valid = (target != 0).float()
    return (losses * valid).sum() / valid.sum().clamp(min=1.0)


def dcg_at_k(labels_in_order, k):
    gains = torch.pow(2.0, labels_in_order[:, :k]) - 1
    discounts = 1.0 / torch.log2(torch.arange(k, dtype=torch.float32) + 2.0)
    return (gains * discounts).sum(dim=1)


def ndcg_at_k(y_pred, y_true, k=5):
    _, order = torch.sort(y_pred, descending=True, dim=1)
    ranked = torch.gather(y_true, 1, order)
    ideal = torch.gather(y_true, 1, torch.argsort(y_true, dim=1, descending=True))
    idcg = dcg_at_k(ideal, k)
    ndcg = dcg_at_k(ranked, k) / idcg.clamp(min=1e-10)
    return torch.where(idcg > 0, ndcg, torch.ones_like(ndcg)).mean()


class Scorer(nn.Module):
    def __init__(self, n_features, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def make_lists(rng, n_queries, n_docs=10, n_features=12):
    x = rng.standard_normal((n_queries, n_docs, n_features))
    w = np.linspace(-1.0, 1.0, n_features)
    relevance = np.tanh(x @ w / 2.0 + 0.3 * (x[..., 0] * x[..., 1])) + 0.2 * rng.standard_normal(
        (n_queries, n_docs))
    labels = np.digitize(relevance, [-0.6, -0.1, 0.4, 0.8]).astype(np.float32)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(17)
    train_x, train_y = make_lists(rng, 48)
    test_x, test_y = make_lists(rng, 16)
    model = Scorer(12)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    pairs = torch.combinations(torch.arange(train_x.size(1)), r=2)

    def train_step(x, y):
        scores = model(x)
        loss = listnet_loss(scores, y) + 0.5 * pairwise_hinge_loss(scores, y, pairs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    evaluate = ndcg_at_k
    if compile:
        train_step = torch.compile(train_step)
        evaluate = torch.compile(ndcg_at_k)
    losses, ndcgs = [], []
    for epoch in range(4):
        model.train()
        perm = torch.randperm(train_x.size(0))
        for idx in perm.split(12):
            losses.append(train_step(train_x[idx], train_y[idx]).item())
        model.eval()
        with torch.no_grad():
            ndcgs.append(evaluate(model(test_x), test_y, k=5).item())

    with torch.no_grad():
        scores = model(test_x)
        listnet = listnet_loss(scores, test_y)
        pairwise = pairwise_hinge_loss(scores, test_y, pairs)
        random_ndcg = ndcg_at_k(torch.rand(test_y.shape), test_y, k=5)
    values = {"ndcgs": torch.tensor(ndcgs), "ndcg_at_3": ndcg_at_k(scores, test_y, k=3),
              "random_ndcg": random_ndcg, "listnet": listnet, "pairwise": pairwise,
              "n_pairs": int(pairs.shape[0]), "top_docs": torch.sort(scores, 1, True)[1][:, :3]}
    return {"losses": losses, "values": values, "initial_state": initial}
