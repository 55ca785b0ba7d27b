"""Activation checkpointing with gradient accumulation as the memory-saving guides (Hugging Face's
gradient_checkpointing, nanoGPT-style loops, the PyTorch checkpoint docs) write it in plain
PyTorch: a stack of pre-norm transformer blocks (`nn.MultiheadAttention(batch_first=True)` with a
causal mask, a GELU MLP), each run through `torch.utils.checkpoint.checkpoint(block, x,
use_reentrant=False)` while training; four micro-batches per optimizer step, each loss divided by
`accum_steps` before `backward()`, then `clip_grad_norm_`, `optimizer.step()` and
`zero_grad(set_to_none=True)`. The same stack without checkpointing gives the same gradients, and
the accumulated gradients are the full batch's. The micro-step (forward, scaled loss, backward)
is the compiled function; the optimizer step stays outside it. A frozen-embedding copy under
`use_reentrant=True` shows that variant's pitfall: its blocks get no gradients."""
import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

VOCAB, CONTEXT = 24, 8


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, dim=16, heads=2, depth=4, use_checkpoint=True):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(1, CONTEXT, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        self.use_checkpoint = use_checkpoint
        self.use_reentrant = False

    def forward(self, idx):
        x = self.tok(idx) + self.pos[:, :idx.shape[1]]
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(block, x, use_reentrant=self.use_reentrant)
            else:
                x = block(x)
        return self.head(self.ln_f(x))


def make_data(generator, n):
    """Sequences counting up by a per-sequence stride modulo VOCAB: predictable next tokens."""
    start = torch.randint(0, VOCAB, (n, 1), generator=generator)
    stride = torch.randint(1, 4, (n, 1), generator=generator)
    seq = (start + stride * torch.arange(CONTEXT + 1)) % VOCAB
    return seq[:, :-1], seq[:, 1:]


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    x, y = make_data(torch.Generator().manual_seed(3), 64)
    model = TinyLM()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    plain = copy.deepcopy(model)
    plain.use_checkpoint = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    accum_steps, micro = 4, 4

    def micro_step(xb, yb):
        logits = model(xb)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), yb.reshape(-1)) / accum_steps
        loss.backward()
        return loss

    # the first window's gradients, checkpointed and not, and from the whole window at once
    for i in range(accum_steps):
        sl = slice(i * micro, (i + 1) * micro)
        micro_step(x[sl], y[sl])
        loss = F.cross_entropy(plain(x[sl]).reshape(-1, VOCAB), y[sl].reshape(-1))
        (loss / accum_steps).backward()
    window = slice(0, accum_steps * micro)
    full = copy.deepcopy(plain)
    full.zero_grad()
    F.cross_entropy(full(x[window]).reshape(-1, VOCAB), y[window].reshape(-1)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grad_gap = max((p.grad - grads[n]).abs().max() for n, p in plain.named_parameters())
    full_gap = max((p.grad - grads[n]).abs().max() for n, p in full.named_parameters())
    optimizer.zero_grad(set_to_none=True)
    cleared = all(p.grad is None for p in model.parameters())

    if compile:
        micro_step = torch.compile(micro_step)
    losses, norms = [], []
    model.train()
    for step in range(3):
        window_loss = 0.0
        for i in range(accum_steps):
            sl = slice((step * accum_steps + i) * micro, (step * accum_steps + i + 1) * micro)
            loss = micro_step(x[sl], y[sl])
            window_loss += loss.item()
            losses.append(loss.item())
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(window_loss)

    # the reentrant variant's pitfall: with the embeddings frozen no block input requires grad,
    # so (with a warning) the checkpointed blocks get no gradients; the head still does
    frozen = copy.deepcopy(model)
    frozen.use_reentrant = True
    frozen.tok.weight.requires_grad_(False)
    frozen.pos.requires_grad_(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.cross_entropy(frozen(x[:4]).reshape(-1, VOCAB), y[:4].reshape(-1)).backward()
    reentrant_warned = any("requires_grad=True" in str(w.message) for w in caught)
    blocks_without_grad = sum(p.grad is None for p in frozen.blocks.parameters())

    model.eval()
    with torch.no_grad():
        logits = model(x[48:])
        accuracy = (logits.argmax(-1) == y[48:]).float().mean()
    values = {"grad_gap": grad_gap, "full_gap": full_gap, "cleared": cleared,
              "reentrant_warned": reentrant_warned, "blocks_without_grad": blocks_without_grad,
              "n_block_params": len(list(frozen.blocks.parameters())),
              "head_grad_after_frozen": frozen.head.weight.grad,
              "head_grad": grads["head.weight"], "pos_grad": grads["pos"],
              "norms": torch.stack(norms), "accuracy": accuracy, "eval_logits": logits[:2, -1]}
    return {"losses": losses, "values": values, "initial_state": initial}
