"""Deep metric learning as the person re-identification and face recognition repos write it: an
embedding MLP trained on P classes x K samples per batch with the batch-hard triplet loss
(`torch.cdist` distances, label-equality masks `labels[:, None] == labels[None, :]`, the hardest
positive a masked `max`, the hardest negative a `min` after pushing positives away), the easy
variant through `nn.TripletMarginLoss` on sampled (anchor, positive, negative) triples, and an
ArcFace head (`F.normalize` of features and class centres, `torch.acos` of clamped cosines, the
additive angular margin `torch.cos(theta + m)` written into the target column by a one-hot
`scatter_`) trained with cross-entropy; evaluated by recall@1 over `cdist` with the diagonal
filled by `inf`. The three training steps and the recall are the compiled functions."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class EmbeddingNet(nn.Module):
    def __init__(self, in_features, embedding_dim=16):
        super().__init__()
        # no biases: one before BatchNorm is removed by it, and the distances cannot see one
        # after the last layer (their gradients are zero, rounding's sign blown up by Adam)
        self.net = nn.Sequential(nn.Linear(in_features, 64, bias=False), nn.BatchNorm1d(64),
                                 nn.ReLU(), nn.Linear(64, embedding_dim, bias=False))

    def forward(self, x):
        return self.net(x)


def batch_hard_triplet_loss(embeddings, labels, margin=0.3):
    dist = torch.cdist(embeddings, embeddings, p=2)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.size(0), dtype=torch.bool)
    positive_mask = same & ~eye
    hardest_positive, _ = (dist * positive_mask.float()).max(dim=1)
    max_dist, _ = dist.max(dim=1, keepdim=True)
    hardest_negative, _ = (dist + max_dist * same.float()).min(dim=1)
    loss = F.relu(hardest_positive - hardest_negative + margin)
    return loss.mean(), (hardest_positive > hardest_negative).float().mean()


class ArcFace(nn.Module):
    def __init__(self, embedding_dim, n_classes, s=16.0, m=0.3):
        super().__init__()
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.empty(n_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embeddings, labels):
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        theta = torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))
        target_logits = torch.cos(theta + self.m)
        one_hot = torch.zeros_like(cosine)
        one_hot.scatter_(1, labels.view(-1, 1).long(), 1)
        output = one_hot * target_logits + (1 - one_hot) * cosine
        return output * self.s


def recall_at_1(embeddings, labels):
    dist = torch.cdist(embeddings, embeddings)
    dist.fill_diagonal_(float("inf"))
    nearest = dist.argmin(dim=1)
    return (labels[nearest] == labels).float().mean()


def make_data(rng, n_classes, per_class, dim=10):
    centres = 2.0 * rng.standard_normal((n_classes, dim))
    x = centres[:, None, :] + rng.standard_normal((n_classes, per_class, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    return torch.from_numpy(x.reshape(-1, dim).astype(np.float32)), torch.from_numpy(labels)


def pk_batches(labels, p, k, n_batches):
    """P classes drawn by `randperm`, K samples of each by `randperm` within the class."""
    n_classes = int(labels.max()) + 1
    by_class = [torch.nonzero(labels == c).flatten() for c in range(n_classes)]
    for _ in range(n_batches):
        classes = torch.randperm(n_classes)[:p]
        yield torch.cat([by_class[c][torch.randperm(len(by_class[c]))[:k]] for c in classes])


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(23)
    n_classes = 8
    x, labels = make_data(rng, n_classes, 12)
    test_x, test_labels = make_data(rng, n_classes, 6)
    model = EmbeddingNet(10)
    arcface = ArcFace(16, n_classes)
    if initial_state is not None:
        model.load_state_dict(initial_state["model"])
        arcface.load_state_dict(initial_state["arcface"])
    initial = {"model": {k: v.clone() for k, v in model.state_dict().items()},
               "arcface": {k: v.clone() for k, v in arcface.state_dict().items()}}
    optimizer = torch.optim.Adam(list(model.parameters()) + list(arcface.parameters()), lr=3e-3)
    triplet = nn.TripletMarginLoss(margin=0.5, p=2)

    def hard_step(xb, yb):
        optimizer.zero_grad()
        loss, violations = batch_hard_triplet_loss(model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss, violations

    def easy_step(anchor, positive, negative):
        optimizer.zero_grad()
        loss = triplet(model(anchor), model(positive), model(negative))
        loss.backward()
        optimizer.step()
        return loss

    def arcface_step(xb, yb):
        optimizer.zero_grad()
        loss = F.cross_entropy(arcface(model(xb), yb), yb)
        loss.backward()
        optimizer.step()
        return loss

    evaluate = recall_at_1
    if compile:
        hard_step, easy_step = torch.compile(hard_step), torch.compile(easy_step)
        arcface_step, evaluate = torch.compile(arcface_step), torch.compile(recall_at_1)
    losses, violations, recalls = [], [], []
    for epoch in range(3):
        model.train()
        for idx in pk_batches(labels, p=4, k=4, n_batches=4):
            loss, violated = hard_step(x[idx], labels[idx])
            losses.append(loss.item())
            violations.append(violated.item())
        anchors = torch.randint(0, len(labels), (16,))
        positives = (anchors // 12) * 12 + torch.randint(0, 12, (16,))
        negatives = (anchors + 12 * torch.randint(1, n_classes, (16,))) % len(labels)
        losses.append(easy_step(x[anchors], x[positives], x[negatives]).item())
        perm = torch.randperm(len(labels))
        for idx in perm.split(32):
            losses.append(arcface_step(x[idx], labels[idx]).item())
        model.eval()
        with torch.no_grad():
            recalls.append(evaluate(model(test_x), test_labels).item())

    with torch.no_grad():
        embeddings = model(test_x)
        hard, _ = batch_hard_triplet_loss(embeddings, test_labels)
        logits = arcface(embeddings, test_labels)
    values = {"recalls": torch.tensor(recalls), "violations": torch.tensor(violations),
              "test_hard_loss": hard, "arcface_logits": logits,
              # off the diagonal: PyTorch's cdist of more than 25 rows goes through a matmul,
              # whose rounding leaves ~1e-3 where a point meets itself
              "test_distances": torch.cdist(embeddings, embeddings) * (1 - torch.eye(48))}
    return {"losses": losses, "values": values, "initial_state": initial}
