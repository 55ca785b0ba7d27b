"""The tensor-parallel tests' models, data and plans, shared by the ranks (started by mpiexec)
and the single-process references: the toy MLP of pytorch/examples' tensor_parallel_example
and a small Llama-style transformer (RMSNorm, attention, SwiGLU feed-forward) in the pattern
of its fsdp_tp_example, float64, seeded."""

from __future__ import annotations

import numpy as np

import kiln
import kiln.nn as nn
import kiln.nn.functional as F

VOCAB, SEQ, DIM, HEADS, HIDDEN, LAYERS, BATCH = 11, 6, 8, 2, 20, 2, 3
STEPS = 3


class ToyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(10, 32)
        self.relu = nn.ReLU()
        self.out_proj = nn.Linear(32, 5)

    def forward(self, x):
        return self.out_proj(self.relu(self.in_proj(x)))


def mlp(seed: int = 1) -> ToyMLP:
    kiln.manual_seed(seed)
    return ToyMLP().double()


def mlp_data(world: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One batch of world * 4 rows: every rank trains on all of it (TP), or on its 4 rows
    (the sequence_parallel_example's Shard(0) input)."""
    rng = np.random.default_rng(5)
    return rng.normal(size=(world * 4, 10)), rng.normal(size=(world * 4, 5))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq = nn.Linear(DIM, DIM, bias=False)
        self.wk = nn.Linear(DIM, DIM, bias=False)
        self.wv = nn.Linear(DIM, DIM, bias=False)
        self.wo = nn.Linear(DIM, DIM, bias=False)

    def forward(self, x):
        # -1 heads: under tensor parallelism each rank holds HEADS / world of them
        b, s, _ = x.shape
        heads = [t.view(b, s, -1, DIM // HEADS).transpose(1, 2)
                 for t in (self.wq(x), self.wk(x), self.wv(x))]
        out = F.scaled_dot_product_attention(*heads, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Linear(DIM, HIDDEN, bias=False)
        self.w2 = nn.Linear(HIDDEN, DIM, bias=False)
        self.w3 = nn.Linear(DIM, HIDDEN, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_norm = nn.RMSNorm(DIM)
        self.attention = Attention()
        self.ffn_norm = nn.RMSNorm(DIM)
        self.feed_forward = FeedForward()

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.norm = nn.RMSNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h))


def transformer(seed: int = 0) -> Transformer:
    kiln.manual_seed(seed)
    model = Transformer().double()
    with kiln.no_grad():        # RMSNorm's ones would hide a wrong weight gradient
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(kiln.randn(*p.shape, dtype=p.dtype) * 0.1)
    return model


def tokens() -> np.ndarray:
    """The batch every rank trains on (ids in both ranks' halves of the vocabulary)."""
    return np.random.default_rng(11).integers(0, VOCAB, (BATCH, SEQ + 1))


def lm_loss(model, batch: np.ndarray) -> kiln.Tensor:
    logits = model(kiln.tensor(batch[:, :-1]))
    return F.cross_entropy(logits.reshape(-1, VOCAB), kiln.tensor(batch[:, 1:]).reshape(-1))


def tp_plans(tp, Shard, Replicate):
    """(top-level plan, per-block plan) of tensor parallelism without sequence parallelism
    (`tp` is kiln's or torch's tensor.parallel module)."""
    top = {"tok_embeddings": tp.RowwiseParallel(input_layouts=Replicate()),
           "output": tp.ColwiseParallel(output_layouts=Replicate())}
    block = {"attention.wq": tp.ColwiseParallel(), "attention.wk": tp.ColwiseParallel(),
             "attention.wv": tp.ColwiseParallel(), "attention.wo": tp.RowwiseParallel(),
             "feed_forward.w[13]": tp.ColwiseParallel(),     # fnmatch: w1 and w3
             "feed_forward.w2": tp.RowwiseParallel()}
    return top, block


def sp_plans(tp, Shard, Replicate):
    """fsdp_tp_example's plans: sequence-parallel norms, activations Shard(1) between blocks."""
    top = {"tok_embeddings": tp.RowwiseParallel(input_layouts=Replicate(),
                                                output_layouts=Shard(1)),
           "norm": tp.SequenceParallel(),
           "output": tp.ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())}
    block = {"attention_norm": tp.SequenceParallel(),
             "attention": tp.PrepareModuleInput(input_layouts=(Shard(1),),
                                                desired_input_layouts=(Replicate(),)),
             "attention.wq": tp.ColwiseParallel(use_local_output=False),
             "attention.wk": tp.ColwiseParallel(use_local_output=False),
             "attention.wv": tp.ColwiseParallel(use_local_output=False),
             "attention.wo": tp.RowwiseParallel(output_layouts=Shard(1)),
             "ffn_norm": tp.SequenceParallel(),
             "feed_forward": tp.PrepareModuleInput(input_layouts=(Shard(1),),
                                                   desired_input_layouts=(Replicate(),)),
             "feed_forward.w1": tp.ColwiseParallel(),
             "feed_forward.w2": tp.RowwiseParallel(output_layouts=Shard(1)),
             "feed_forward.w3": tp.ColwiseParallel()}
    return top, block


def prepare_data() -> tuple[np.ndarray, ...]:
    """x, y, w, probe of the Prepare* check: (2, 4, 3) each, sequence dim 1 split 2 + 2."""
    rng = np.random.default_rng(9)
    return tuple(rng.normal(size=(2, 4, 3)) for _ in range(4))


def uneven_data() -> tuple[np.ndarray, np.ndarray]:
    """x (5 rows: 3 + 2 over two ranks) and a probe of the (5, 6) output."""
    rng = np.random.default_rng(13)
    return rng.normal(size=(5, 4)), rng.normal(size=(5, 6))


def adam(model) -> kiln.optim.Optimizer:
    return kiln.optim.Adam(model.parameters(), lr=1e-2)


def state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
