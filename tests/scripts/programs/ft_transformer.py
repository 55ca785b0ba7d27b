"""An FT-Transformer for tabular data as rtdl and its followers write it: each numerical column a
token of its own (`x[..., None] * weight + bias`), each categorical column an `nn.Embedding` row
found through per-column offsets added to the codes (one table for all columns), a learned CLS
token `expand`ed over the batch and joined by `torch.cat`, a pre-norm
`nn.TransformerEncoder(norm_first=True)`, a head on the CLS token's final state, an imbalanced
binary target trained with `BCEWithLogitsLoss(pos_weight=negatives / positives)` and AdamW
(no weight decay on embeddings, norms and biases), and the AUROC written by hand: scores ranked
by `argsort`, true and false positive rates by `cumsum`, the area by the trapezoid rule. The
training step and the AUROC are the compiled functions."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class NumericalFeatureTokenizer(nn.Module):
    def __init__(self, n_features, d_token):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_features, d_token))
        self.bias = nn.Parameter(torch.empty(n_features, d_token))
        bound = 1 / math.sqrt(d_token)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return self.weight[None] * x[..., None] + self.bias[None]


class CategoricalFeatureTokenizer(nn.Module):
    def __init__(self, cardinalities, d_token):
        super().__init__()
        category_offsets = torch.tensor([0] + cardinalities[:-1]).cumsum(0)
        self.register_buffer("category_offsets", category_offsets, persistent=False)
        self.embeddings = nn.Embedding(sum(cardinalities), d_token)
        self.bias = nn.Parameter(torch.empty(len(cardinalities), d_token))
        bound = 1 / math.sqrt(d_token)
        nn.init.uniform_(self.embeddings.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return self.embeddings(x + self.category_offsets[None]) + self.bias[None]


class CLSToken(nn.Module):
    def __init__(self, d_token):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_token))
        bound = 1 / math.sqrt(d_token)
        nn.init.uniform_(self.weight, -bound, bound)

    def expand(self, *leading_dimensions):
        new_dims = (1,) * (len(leading_dimensions) - 1)
        return self.weight.view(*new_dims, -1).expand(*leading_dimensions, -1)

    def forward(self, x):
        return torch.cat([x, self.expand(len(x), 1)], dim=1)


class FTTransformer(nn.Module):
    def __init__(self, n_num, cardinalities, d_token=16, n_blocks=2, n_heads=4):
        super().__init__()
        self.num_tokenizer = NumericalFeatureTokenizer(n_num, d_token)
        self.cat_tokenizer = CategoricalFeatureTokenizer(cardinalities, d_token)
        self.cls_token = CLSToken(d_token)
        layer = nn.TransformerEncoderLayer(d_token, n_heads, dim_feedforward=2 * d_token,
                                           dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_blocks, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_token), nn.ReLU(), nn.Linear(d_token, 1))

    def forward(self, x_num, x_cat):
        x = torch.cat([self.num_tokenizer(x_num), self.cat_tokenizer(x_cat)], dim=1)
        x = self.cls_token(x)
        x = self.transformer(x)
        return self.head(x[:, -1]).squeeze(-1)


def auroc(scores, labels):
    order = torch.argsort(scores, descending=True)
    labels = labels[order]
    tps = torch.cumsum(labels, dim=0)
    fps = torch.cumsum(1 - labels, dim=0)
    tpr = torch.cat([torch.zeros(1), tps / tps[-1]])
    fpr = torch.cat([torch.zeros(1), fps / fps[-1]])
    return torch.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2)


def make_table(rng, n, cardinalities):
    x_num = rng.standard_normal((n, 4)).astype(np.float32)
    x_cat = np.stack([rng.integers(0, c, n) for c in cardinalities], axis=1)
    effect = np.array([0.8, -0.5, 0.3])
    logit = (1.2 * x_num[:, 0] - x_num[:, 1] * x_num[:, 2] + np.where(x_cat[:, 0] == 1, 1.5, 0.0)
             + effect[x_cat[:, 1] % 3] - 1.6)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return torch.from_numpy(x_num), torch.from_numpy(x_cat), torch.from_numpy(y)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(5)
    cardinalities = [3, 5, 4]
    train_num, train_cat, train_y = make_table(rng, 96, cardinalities)
    test_num, test_cat, test_y = make_table(rng, 48, cardinalities)
    model = FTTransformer(4, cardinalities)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    no_decay = ["bias", "norm", "embeddings", "tokenizer", "cls_token"]
    decay = [p for n, p in model.named_parameters() if not any(s in n for s in no_decay)]
    other = [p for n, p in model.named_parameters() if any(s in n for s in no_decay)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-5},
                                   {"params": other, "weight_decay": 0.0}], lr=1e-3)
    positives = train_y.sum()
    criterion = nn.BCEWithLogitsLoss(pos_weight=(len(train_y) - positives) / positives)

    def train_step(x_num, x_cat, y):
        optimizer.zero_grad()
        loss = criterion(model(x_num, x_cat), y)
        loss.backward()
        optimizer.step()
        return loss

    evaluate = auroc
    if compile:
        train_step = torch.compile(train_step)
        evaluate = torch.compile(auroc)
    losses, aurocs = [], []
    for epoch in range(3):
        model.train()
        perm = torch.randperm(len(train_y))
        for idx in perm.split(24):
            losses.append(train_step(train_num[idx], train_cat[idx], train_y[idx]).item())
        model.eval()
        with torch.no_grad():
            aurocs.append(evaluate(model(test_num, test_cat), test_y).item())

    with torch.no_grad():
        scores = model(test_num, test_cat)
    values = {"aurocs": torch.tensor(aurocs), "scores": scores,
              "pos_weight": criterion.pos_weight, "groups": f"{len(decay)}/{len(other)}",
              "offsets": model.cat_tokenizer.category_offsets,
              "perfect_auroc": auroc(test_y * 2.0, test_y)}
    return {"losses": losses, "values": values, "initial_state": initial}
