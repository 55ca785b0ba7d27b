"""scaled_dot_product_attention tutorial: F.scaled_dot_product_attention against the explicit
softmax(q k^T / sqrt(d)) v with is_causal, a boolean and an additive attn_mask, an explicit
scale and the causal_upper_left / causal_lower_right biases, under
torch.nn.attention.sdpa_kernel(SDPBackend.MATH); then a causal self-attention
block (nanoGPT style: one c_attn projection split into q, k, v, heads, is_causal=True) trained a
few steps as a tiny character-level language model."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right, causal_upper_left


class CausalSelfAttention(nn.Module):
    def __init__(self, num_heads, embed_dimension, bias=False, is_causal=False, dropout=0.0):
        super().__init__()
        assert embed_dimension % num_heads == 0
        self.c_attn = nn.Linear(embed_dimension, 3 * embed_dimension, bias=bias)
        self.c_proj = nn.Linear(embed_dimension, embed_dimension, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.num_heads = num_heads
        self.embed_dimension = embed_dimension
        self.is_causal = is_causal

    def forward(self, x):
        query_projected = self.c_attn(x)
        batch_size = query_projected.size(0)
        embed_dim = query_projected.size(2)
        head_dim = embed_dim // (self.num_heads * 3)
        query, key, value = query_projected.chunk(3, -1)
        query = query.view(batch_size, -1, self.num_heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, self.num_heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, self.num_heads, head_dim).transpose(1, 2)
        if self.training:
            dropout = self.dropout
            is_causal = self.is_causal
        else:
            dropout = 0.0
            is_causal = False
        y = F.scaled_dot_product_attention(query, key, value, attn_mask=None,
                                           dropout_p=dropout, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(batch_size, -1, self.num_heads * head_dim)
        return self.resid_dropout(self.c_proj(y))


class TinyLM(nn.Module):
    def __init__(self, vocab, dim=16, heads=2, block=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, block, dim))
        self.ln = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(heads, dim, bias=True, is_causal=True, dropout=0.0)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[:, :idx.size(1)]
        x = x + self.attn(self.ln(x))
        return self.head(x)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = {}
    query, key, value = (torch.from_numpy(rng.normal(size=(2, 3, 5, 4)).astype(np.float32))
                         for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH):
        values["math_enabled_inside"] = torch.backends.cuda.math_sdp_enabled()
        values["flash_enabled_inside"] = torch.backends.cuda.flash_sdp_enabled()
        values["plain"] = F.scaled_dot_product_attention(query, key, value)
        values["causal"] = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        keep = torch.from_numpy(rng.random((5, 5)) > 0.3) | torch.eye(5, dtype=torch.bool)
        values["bool_mask"] = F.scaled_dot_product_attention(query, key, value, attn_mask=keep)
        bias = torch.from_numpy(rng.normal(size=(1, 3, 5, 5)).astype(np.float32))
        values["float_mask"] = F.scaled_dot_product_attention(query, key, value, attn_mask=bias,
                                                              scale=0.3)
        # the causal biases for a query shorter than the keys (a decoding step over a cache)
        q_short = query[:, :, :3]
        upper_left_bias = causal_upper_left(3, 5)
        lower_right_bias = causal_lower_right(3, 5)
        values["out_upper_left"] = F.scaled_dot_product_attention(q_short, key, value,
                                                                  upper_left_bias)
        values["out_lower_right"] = F.scaled_dot_product_attention(q_short, key, value,
                                                                   lower_right_bias)
        values["out_is_causal"] = F.scaled_dot_product_attention(q_short, key, value,
                                                                 is_causal=True)
        values["upper_left_is_causal"] = bool(torch.allclose(values["out_upper_left"],
                                                             values["out_is_causal"]))
    values["flash_enabled_after"] = torch.backends.cuda.flash_sdp_enabled()
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    manual = torch.softmax(scores, dim=-1) @ value
    values["matches_manual"] = bool(torch.allclose(values["plain"], manual, atol=1e-6))

    text = "hello kiln, hello torch. " * 8
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    starts = rng.integers(0, len(data) - 9, 48)
    xs = torch.stack([data[s:s + 8] for s in starts])
    ys = torch.stack([data[s + 1:s + 9] for s in starts])
    model = TinyLM(len(chars))
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)

    def train_step(xb, yb):
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), yb.view(-1))
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    with sdpa_kernel([SDPBackend.MATH]):
        for epoch in range(3):
            for i in range(0, 48, 12):
                losses.append(train_step(xs[i:i + 12], ys[i:i + 12]).item())
    model.eval()
    with torch.no_grad():
        values["eval_logits"] = model(xs[:2])
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
