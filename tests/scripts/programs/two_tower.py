"""A two-tower retrieval model as the recommender tutorials (TorchRec's two-tower example,
Merlin/YouTube-DNN reimplementations) write it in plain PyTorch: a query tower reading the
user's bag of recently seen item ids through `nn.EmbeddingBag(mode="mean")` with flat ids and
`offsets`, plus a bag of weighted tags through `nn.EmbeddingBag(mode="sum")` with
`per_sample_weights`; an item tower over the item id, its category and its bag of tags
(`mode="max"`, `include_last_offset=True`); both L2-normalized; in-batch negatives (logits `q @
d.T / temperature`, a learned, clamped temperature, accidental hits of the same item masked to
`-inf` off the diagonal, `F.cross_entropy` against `torch.arange(batch)`); the embedding tables
trained by Adagrad and the dense layers by Adam; recall@k on held-out queries by `torch.topk`
and `eq(...).any(dim=1)`. The training step is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

N_ITEMS, N_TAGS, N_CATEGORIES = 60, 20, 6


class QueryTower(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.history = nn.EmbeddingBag(N_ITEMS, dim, mode="mean")
        self.tags = nn.EmbeddingBag(N_TAGS, dim, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, history, history_offsets, tags, tag_offsets, tag_weights):
        h = self.history(history, history_offsets)
        t = self.tags(tags, tag_offsets, per_sample_weights=tag_weights)
        return F.normalize(self.mlp(torch.cat([h, t], dim=1)), dim=-1)


class ItemTower(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.item = nn.Embedding(N_ITEMS, dim)
        self.category = nn.Embedding(N_CATEGORIES, dim)
        self.tags = nn.EmbeddingBag(N_TAGS, dim, mode="max", include_last_offset=True)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, item, category, item_tags, item_tag_offsets):
        x = torch.cat([self.item(item), self.category(category),
                       self.tags(item_tags, item_tag_offsets)], dim=1)
        return F.normalize(self.mlp(x), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, dim=16, temperature=0.1):
        super().__init__()
        self.query = QueryTower(dim)
        self.item = ItemTower(dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def forward(self, batch):
        q = self.query(batch["history"], batch["history_offsets"], batch["tags"],
                       batch["tag_offsets"], batch["tag_weights"])
        d = self.item(batch["item"], batch["category"], *item_tag_bags(batch["item"]))
        temperature = self.log_temperature.exp().clamp(min=0.05)
        logits = q @ d.T / temperature
        # the same item twice in a batch is no negative of itself
        same = batch["item"][:, None] == batch["item"][None, :]
        eye = torch.eye(len(same), dtype=torch.bool)
        return logits.masked_fill(same & ~eye, float("-inf"))


def item_tag_bags(items):
    """Each item's tags: two, fixed by its id; offsets with the end of the last bag."""
    tags = torch.stack([items % N_TAGS, (items * 7 + 3) % N_TAGS], dim=1).flatten()
    offsets = torch.arange(0, 2 * len(items) + 1, 2)
    return tags, offsets


def to_bags(lists):
    """Flat ids and the offset where each bag starts, as EmbeddingBag takes them."""
    flat = torch.tensor([i for bag in lists for i in bag], dtype=torch.long)
    offsets = torch.tensor(np.cumsum([0] + [len(b) for b in lists[:-1]]), dtype=torch.long)
    return flat, offsets


def make_batches(rng, n_batches, batch_size, categories):
    batches = []
    for _ in range(n_batches):
        users = rng.integers(0, N_CATEGORIES, batch_size)      # each user's favourite category
        histories, tags, weights, targets = [], [], [], []
        for u in users:
            pool = np.flatnonzero(categories == u)
            # each batch's bags have one fixed total length, so the flat tensors keep a shape
            histories.append(rng.choice(pool, 3 + (len(histories) % 3)).tolist())
            tags.append([int(u) * 3 % N_TAGS, int(rng.integers(0, N_TAGS))])
            weights.extend([1.0, float(rng.uniform(0.1, 0.5))])
            targets.append(int(rng.choice(pool)))
        history, history_offsets = to_bags(histories)
        tag_ids, tag_offsets = to_bags(tags)
        item = torch.tensor(targets)
        batches.append({"history": history, "history_offsets": history_offsets,
                        "tags": tag_ids, "tag_offsets": tag_offsets,
                        "tag_weights": torch.tensor(weights, dtype=torch.float32),
                        "item": item, "category": torch.from_numpy(categories)[item]})
    return batches


def recall_at_k(model, batch, all_categories, k=5):
    q = model.query(batch["history"], batch["history_offsets"], batch["tags"],
                    batch["tag_offsets"], batch["tag_weights"])
    all_items = torch.arange(N_ITEMS)
    items = model.item(all_items, all_categories, *item_tag_bags(all_items))
    scores = q @ items.T
    top = torch.topk(scores, k, dim=1).indices
    hits = top.eq(batch["item"].unsqueeze(1)).any(dim=1)
    return hits.float().mean(), top


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(3)
    categories = rng.integers(0, N_CATEGORIES, N_ITEMS)
    train = make_batches(rng, 8, 16, categories)
    held_out = make_batches(rng, 1, 24, categories)[0]
    model = TwoTower()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    embedding_params = [p for n, p in model.named_parameters() if "mlp" not in n
                        and "temperature" not in n]
    dense_params = [p for n, p in model.named_parameters() if "mlp" in n
                    or "temperature" in n]
    sparse_opt = torch.optim.Adagrad(embedding_params, lr=0.05)
    dense_opt = torch.optim.Adam(dense_params, lr=3e-3)

    def train_step(batch):
        logits = model(batch)
        labels = torch.arange(logits.shape[0])
        loss = F.cross_entropy(logits, labels)
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(2):
        for batch in train:
            losses.append(train_step(batch).item())

    model.eval()
    all_categories = torch.from_numpy(categories)
    with torch.no_grad():
        recall, top = recall_at_k(model, held_out, all_categories)
        in_batch = model(held_out)
    values = {"recall_at_5": recall, "top": top, "in_batch_logits": in_batch[:4],
              "history_table": model.query.history.weight.detach().clone(),
              "tag_table": model.query.tags.weight.detach().clone(),
              "item_tag_table": model.item.tags.weight.detach().clone(),
              "temperature": model.log_temperature.exp().detach(),
              "masked_hits": (in_batch == float("-inf")).sum()}
    return {"losses": losses, "values": values, "initial_state": initial}
