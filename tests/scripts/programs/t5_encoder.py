"""A T5-style encoder pretrained by span corruption as the T5 ports write it: relative positions
sorted into log-spaced buckets (`torch.log`, `torch.where`, `torch.min` against `torch.full_like`,
`.to(torch.long)`), each bucket's bias per head from an `nn.Embedding` shared by the layers, a
hand-written RMSNorm (no mean, no bias, variance in float32), attention through
`F.scaled_dot_product_attention(..., attn_mask=position_bias + padding_mask, scale=1.0)` (T5 folds
the scaling into its initialization), a gated-GELU feed-forward, an output head tied to the input
embedding and scaled by `d_model ** -0.5`; spans of tokens drawn with `torch.rand` replaced by
sentinel ids and the labels of the other positions (and of padding) `-100`, so
`F.cross_entropy(..., ignore_index=-100, label_smoothing=0.1)` sees only the corrupted spans;
`torch.optim.Adafactor` (factored second moments, relative step sizes) under
`get_linear_schedule_with_warmup`'s `LambdaLR`, and `clip_grad_norm_`. The training step,
scheduler step included, is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1))
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


class T5LayerNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states


class T5Attention(nn.Module):
    def __init__(self, d_model, n_heads, d_kv, dropout):
        super().__init__()
        self.n_heads, self.d_kv, self.dropout = n_heads, d_kv, dropout
        inner = n_heads * d_kv
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def forward(self, hidden_states, bias):
        batch, length, _ = hidden_states.shape

        def shape(states):
            return states.view(batch, -1, self.n_heads, self.d_kv).transpose(1, 2)

        q, k, v = shape(self.q(hidden_states)), shape(self.k(hidden_states)), shape(
            self.v(hidden_states))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).contiguous().view(batch, length, -1)
        return self.o(out)


class T5DenseGatedActDense(nn.Module):
    def __init__(self, d_model, d_ff, dropout):
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states):
        hidden_gelu = F.gelu(self.wi_0(hidden_states), approximate="tanh")
        hidden_states = self.dropout(hidden_gelu * self.wi_1(hidden_states))
        return self.wo(hidden_states)


class T5Block(nn.Module):
    def __init__(self, d_model, n_heads, d_kv, d_ff, dropout):
        super().__init__()
        self.attn_norm = T5LayerNorm(d_model)
        self.attn = T5Attention(d_model, n_heads, d_kv, dropout)
        self.ff_norm = T5LayerNorm(d_model)
        self.ff = T5DenseGatedActDense(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states, bias):
        hidden_states = hidden_states + self.dropout(self.attn(self.attn_norm(hidden_states), bias))
        return hidden_states + self.dropout(self.ff(self.ff_norm(hidden_states)))


class T5Encoder(nn.Module):
    def __init__(self, vocab_size, d_model=32, n_heads=4, d_kv=8, d_ff=64, n_layers=2,
                 num_buckets=16, max_distance=32, dropout=0.1):
        super().__init__()
        self.d_model, self.n_heads = d_model, n_heads
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.shared = nn.Embedding(vocab_size, d_model)
        self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)
        self.blocks = nn.ModuleList(T5Block(d_model, n_heads, d_kv, d_ff, dropout)
                                    for _ in range(n_layers))
        self.final_layer_norm = T5LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.shared.weight
        nn.init.normal_(self.shared.weight, std=1.0)

    def compute_bias(self, query_length, key_length):
        context_position = torch.arange(query_length, dtype=torch.long)[:, None]
        memory_position = torch.arange(key_length, dtype=torch.long)[None, :]
        relative_position = memory_position - context_position
        buckets = relative_position_bucket(relative_position, bidirectional=True,
                                           num_buckets=self.num_buckets,
                                           max_distance=self.max_distance)
        values = self.relative_attention_bias(buckets)           # (query, key, heads)
        return values.permute([2, 0, 1]).unsqueeze(0)            # (1, heads, query, key)

    def forward(self, input_ids, attention_mask):
        length = input_ids.size(1)
        hidden_states = self.dropout(self.shared(input_ids))
        extended = attention_mask[:, None, None, :].to(hidden_states.dtype)
        extended = (1.0 - extended) * torch.finfo(hidden_states.dtype).min
        bias = self.compute_bias(length, length) + extended
        for block in self.blocks:
            hidden_states = block(hidden_states, bias)
        hidden_states = self.dropout(self.final_layer_norm(hidden_states))
        return self.lm_head(hidden_states * self.d_model ** -0.5)


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps):
    def lr_lambda(current_step):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        return max(0.0, float(num_training_steps - current_step)
                   / float(max(1, num_training_steps - num_warmup_steps)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def corrupt_spans(tokens, attention_mask, sentinel_start, noise=0.15, span=3):
    """Spans of about `span` tokens start where `torch.rand` falls under noise / span; each
    masked token becomes a sentinel id, and only masked, unpadded tokens keep their label."""
    starts = (torch.rand(tokens.shape) < noise / span).float()
    masked = F.max_pool1d(F.pad(starts[:, None], (span - 1, 0)), span, stride=1)[:, 0].bool()
    masked = masked & attention_mask.bool()
    sentinels = sentinel_start + torch.cumsum(starts, dim=1).long() % 4
    inputs = torch.where(masked, sentinels, tokens)
    labels = tokens.masked_fill(~masked, -100)
    return inputs, labels


def make_corpus(rng, n, length, vocab):
    """Sequences with a learnable structure (each token follows from the previous two), padded
    (id 0) after a random length."""
    tokens = np.zeros((n, length), dtype=np.int64)
    tokens[:, :2] = rng.integers(5, vocab, (n, 2))
    for t in range(2, length):
        tokens[:, t] = 5 + (tokens[:, t - 1] * 3 + tokens[:, t - 2]) % (vocab - 5)
    lengths = rng.integers(length // 2, length + 1, n)
    mask = np.arange(length)[None, :] < lengths[:, None]
    return torch.from_numpy(np.where(mask, tokens, 0)), torch.from_numpy(mask.astype(np.int64))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(11)
    vocab, length = 40, 24
    tokens, attention_mask = make_corpus(rng, 64, length, vocab)
    model = T5Encoder(vocab + 4)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    steps = 16
    optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=4,
                                                num_training_steps=steps)

    def train_step(input_ids, mask, labels):
        logits = model(input_ids, mask)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1),
                               ignore_index=-100, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, lrs = [], []
    model.train()
    for step in range(steps):
        idx = torch.arange(step * 16, step * 16 + 16) % tokens.size(0)
        inputs, labels = corrupt_spans(tokens[idx], attention_mask[idx], sentinel_start=vocab)
        losses.append(train_step(inputs, attention_mask[idx], labels).item())
        lrs.append(scheduler.get_last_lr()[0])

    model.eval()
    with torch.no_grad():
        inputs, labels = corrupt_spans(tokens[:16], attention_mask[:16], sentinel_start=vocab)
        logits = model(inputs, attention_mask[:16])
        predicted = logits.argmax(-1)
        scored = labels != -100
        accuracy = (predicted[scored] == labels[scored]).float().mean()
    relative = torch.arange(-40, 41)
    values = {"buckets": relative_position_bucket(relative, num_buckets=16, max_distance=32),
              "causal_buckets": relative_position_bucket(relative, bidirectional=False),
              "lrs": torch.tensor(lrs), "eval_logits": logits, "accuracy": accuracy,
              "n_scored": int(scored.sum()), "tied": model.lm_head.weight is model.shared.weight}
    return {"losses": losses, "values": values, "initial_state": initial}
