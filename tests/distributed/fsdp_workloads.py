"""The FSDP tests' models, data and training loops, shared by the ranks (started by mpiexec)
and the single-process references: a small transformer in the pattern of pytorch/examples'
FSDP2 example (token and position embeddings, blocks of attention and MLP, a final norm and
an output projection), float64, seeded."""

from __future__ import annotations

import numpy as np

import kiln
import kiln.nn as nn
import kiln.nn.functional as F

VOCAB, SEQ, DIM, HEADS, HIDDEN, LAYERS = 11, 6, 8, 2, 20, 2
BATCH = 4          # per rank
STEPS = 5


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq = nn.Linear(DIM, DIM, bias=False)
        self.wk = nn.Linear(DIM, DIM, bias=False)
        self.wv = nn.Linear(DIM, DIM, bias=False)
        self.wo = nn.Linear(DIM, DIM, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        heads = [t.view(b, s, HEADS, DIM // HEADS).transpose(1, 2)
                 for t in (self.wq(x), self.wk(x), self.wv(x))]
        out = F.scaled_dot_product_attention(*heads, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, DIM))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_norm = nn.LayerNorm(DIM)
        self.attention = Attention()
        self.ffn_norm = nn.LayerNorm(DIM)
        self.w1 = nn.Linear(DIM, HIDDEN)
        self.w2 = nn.Linear(HIDDEN, DIM)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.w2(F.gelu(self.w1(self.ffn_norm(h))))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.pos_embeddings = nn.Embedding(SEQ, DIM)
        self.layers = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.norm = nn.LayerNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens) + self.pos_embeddings(kiln.arange(tokens.shape[1],
                                                                     device=tokens.device))
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h))


def transformer(seed: int = 0) -> Transformer:
    kiln.manual_seed(seed)
    return Transformer().double()


def tokens(step: int, rank: int | None = None, world: int = 2) -> np.ndarray:
    """The step's batch: BATCH rows per rank (all world * BATCH rows when rank is None)."""
    data = np.random.default_rng(50 + step).integers(0, VOCAB, (world * BATCH, SEQ + 1))
    return data if rank is None else data[rank * BATCH:(rank + 1) * BATCH]


def lm_loss(model, batch: np.ndarray) -> kiln.Tensor:
    """Next-token cross-entropy, mean over the batch's tokens."""
    logits = model(kiln.tensor(batch[:, :-1]))
    return F.cross_entropy(logits.reshape(-1, VOCAB), kiln.tensor(batch[:, 1:]).reshape(-1))


def train(model, opt, steps: int, rank: int | None = None, start: int = 0) -> list[float]:
    losses = []
    for step in range(start, start + steps):
        loss = lm_loss(model, tokens(step, rank))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses


def adam(model) -> kiln.optim.Optimizer:
    return kiln.optim.Adam(model.parameters(), lr=1e-2)


def mlp(seed: int = 3) -> nn.Module:
    """Float32, for mixed precision: odd sizes, so shards are uneven."""
    kiln.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def mlp_data(rank: int | None = None, world: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(world * 4, 6)), rng.normal(size=(world * 4, 3))
    if rank is None:
        return x.astype(np.float32), y.astype(np.float32)
    return (x[rank * 4:(rank + 1) * 4].astype(np.float32),
            y[rank * 4:(rank + 1) * 4].astype(np.float32))


def init_normal(module) -> None:
    """An initialization for `model.apply`: Linear weights drawn from N(0, 0.02)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)


def state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
