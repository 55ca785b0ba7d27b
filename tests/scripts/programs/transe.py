"""TransE knowledge-graph embeddings as the OpenKE-style reference code writes it: entity and
relation `nn.Embedding`s with `max_norm=1` (the looked-up entity rows renormalized in place on
every forward), Xavier-uniform initialization, the score ||h + r - t||_1 by `torch.norm(...,
p=1, dim=-1)`, negative sampling by corrupting the head or the tail with `torch.randint` and a
`torch.rand` coin, `nn.MarginRankingLoss(margin=1.0)` with target -1 (positives should score
lower), SGD, and filtered-free link prediction metrics (mean rank and Hits@3 over all
candidate tails). The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn


class TransE(nn.Module):
    def __init__(self, n_entities, n_relations, dim=16, norm=1):
        super().__init__()
        self.norm = norm
        self.entities = nn.Embedding(n_entities, dim, max_norm=1)
        self.relations = nn.Embedding(n_relations, dim)
        nn.init.xavier_uniform_(self.entities.weight.data)
        nn.init.xavier_uniform_(self.relations.weight.data)
        with torch.no_grad():      # relations normalized once, at the start (the paper's line 2)
            self.relations.weight.div_(self.relations.weight.norm(p=2, dim=1, keepdim=True))

    def distance(self, triplets):
        heads = self.entities(triplets[:, 0])
        relations = self.relations(triplets[:, 1])
        tails = self.entities(triplets[:, 2])
        return torch.norm(heads + relations - tails, p=self.norm, dim=1)

    def forward(self, positive, negative):
        return self.distance(positive), self.distance(negative)


def corrupt(triplets, n_entities):
    """Replace the head or the tail (a fair coin per triplet) by a random entity."""
    random_entities = torch.randint(high=n_entities, size=(triplets.shape[0],))
    head_or_tail = torch.rand(triplets.shape[0]) < 0.5
    heads = torch.where(head_or_tail, random_entities, triplets[:, 0])
    tails = torch.where(head_or_tail, triplets[:, 2], random_entities)
    return torch.stack((heads, triplets[:, 1], tails), dim=1)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(8)
    n_entities, n_relations = 30, 4
    # a graph with structure: relation r links e to (e + r + 1) mod n for a random half
    heads = rng.integers(0, n_entities, 96)
    rels = rng.integers(0, n_relations, 96)
    tails = (heads + 3 * rels + 1) % n_entities
    triplets = torch.from_numpy(np.stack([heads, rels, tails], 1).astype(np.int64))

    model = TransE(n_entities, n_relations)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.MarginRankingLoss(margin=1.0, reduction="mean")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def train_step(positive):
        negative = corrupt(positive, n_entities)
        optimizer.zero_grad()
        pos_d, neg_d = model(positive, negative)
        target = torch.tensor([-1], dtype=torch.long)
        loss = criterion(pos_d, neg_d, target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(4):
        order = torch.randperm(triplets.shape[0])
        for batch in triplets[order].split(32):
            losses.append(train_step(batch).item())

    model.eval()
    with torch.no_grad():
        test = triplets[:16]
        h = model.entities(test[:, 0]) + model.relations(test[:, 1])
        dist = torch.cdist(h, model.entities.weight, p=1)
        true_d = dist.gather(1, test[:, 2:3])
        ranks = (dist < true_d).sum(dim=1) + 1
    values = {"ranks": ranks, "mean_rank": ranks.float().mean(),
              "hits3": (ranks <= 3).float().mean(),
              "entity_norms": model.entities.weight.norm(dim=1)}
    return {"losses": losses, "values": values, "initial_state": initial}
