"""GPT-2-style generation with a KV cache, as HuggingFace-era model code writes it: a tiny
decoder trained first (the train step compiled), then generation. Attention takes
`layer_past` and returns `present = (key, value)`, the past keys and values grown with
`torch.cat(..., dim=-2)`; the causal mask a `torch.tril` buffer sliced to the query and key
lengths and applied by `masked_fill(mask == 0, float("-inf"))`; position ids continue from
the cache length. Decoding: greedy with and without the cache giving the same tokens, then
sampling with temperature, top-k (`torch.topk`, `masked_fill` below the k-th value) and top-p
(nucleus) filtering (`torch.sort(descending=True)`, `cumsum` of the softmax, the mask shifted
right by one and `scatter`ed back to vocabulary order) and `torch.multinomial` with a seeded
`torch.Generator`; and gpt-fast's static cache (buffers written at a tensor `input_pos`,
`scaled_dot_product_attention` with a boolean mask), its one-token decode compiled."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, n_head, ctx):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.register_buffer("bias", torch.tril(torch.ones(ctx, ctx)).view(1, 1, ctx, ctx))
        self.kv_cache = None

    def split_heads(self, x):
        b, t, c = x.size()
        return x.view(b, t, self.n_head, c // self.n_head).permute(0, 2, 1, 3)

    def forward(self, x, layer_past=None, use_cache=False, input_pos=None):
        q, k, v = self.c_attn(x).split(x.size(-1), dim=2)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        if self.kv_cache is not None:                  # gpt-fast's static cache
            k, v = self.kv_cache.update(input_pos, k, v)
            mask = self.bias[0, 0, input_pos, :k.size(-2)].bool()
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = a.transpose(1, 2).contiguous().view(x.shape)
            return self.c_proj(a), None
        if layer_past is not None:
            past_key, past_value = layer_past
            k = torch.cat((past_key, k), dim=-2)
            v = torch.cat((past_value, v), dim=-2)
        present = (k, v) if use_cache else None
        w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(v.size(-1))
        nd, ns = w.size(-2), w.size(-1)
        mask = self.bias[:, :, ns - nd:ns, :ns]
        w = w.masked_fill(mask == 0, float("-inf"))
        w = F.softmax(w, dim=-1)
        a = torch.matmul(w, v)
        a = a.permute(0, 2, 1, 3).contiguous()
        a = a.view(*a.size()[:-2], a.size(-2) * a.size(-1))
        return self.c_proj(a), present


class Block(nn.Module):
    def __init__(self, dim, n_head, ctx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_head, ctx)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x, layer_past=None, use_cache=False, input_pos=None):
        a, present = self.attn(self.ln_1(x), layer_past=layer_past, use_cache=use_cache,
                               input_pos=input_pos)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT2(nn.Module):
    def __init__(self, vocab, dim=32, n_head=4, n_layer=2, ctx=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(ctx, dim)
        self.h = nn.ModuleList([Block(dim, n_head, ctx) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()

    def forward(self, input_ids, past_key_values=None, use_cache=False, input_pos=None):
        if past_key_values is None:
            past_length = 0
            past_key_values = tuple([None] * len(self.h))
        else:
            past_length = past_key_values[0][0].size(-2)
        position_ids = torch.arange(past_length, input_ids.size(-1) + past_length,
                                    dtype=torch.long, device=input_ids.device)
        position_ids = position_ids.unsqueeze(0).view(-1, input_ids.size(-1))
        if input_pos is not None:
            position_ids = input_pos.unsqueeze(0)
        x = self.wte(input_ids) + self.wpe(position_ids)
        presents = () if use_cache else None
        for block, layer_past in zip(self.h, past_key_values):
            x, present = block(x, layer_past=layer_past, use_cache=use_cache,
                               input_pos=input_pos)
            if use_cache:
                presents = presents + (present,)
        return self.lm_head(self.ln_f(x)), presents


class KVCache(nn.Module):
    def __init__(self, batch, n_head, max_len, head_dim):
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape))
        self.register_buffer("v_cache", torch.zeros(shape))

    def update(self, input_pos, k_val, v_val):
        k_out, v_out = self.k_cache, self.v_cache
        k_out[:, :, input_pos] = k_val
        v_out[:, :, input_pos] = v_val
        return k_out, v_out


def setup_caches(model, batch, max_len):
    for block in model.h:
        attn = block.attn
        head_dim = attn.c_proj.in_features // attn.n_head
        attn.kv_cache = KVCache(batch, attn.n_head, max_len, head_dim)


def decode_one_token(model, tok, input_pos):
    logits, _ = model(tok, input_pos=input_pos)
    return torch.argmax(logits[:, -1], dim=-1, keepdim=True)


@torch.no_grad()
def generate_static(model, ids, steps, decode):
    """gpt-fast's loop: a prefill of the prompt, then one token at a time at position
    `input_pos` (a tensor), the cache written in place."""
    t = ids.size(1)
    setup_caches(model, ids.size(0), 32)
    tok = decode_one_token(model, ids, torch.arange(0, t))
    out = [ids, tok]
    input_pos = torch.tensor([t])
    for _ in range(steps - 1):
        tok = decode(model, tok, input_pos)
        out.append(tok.clone())
        input_pos += 1
    for block in model.h:
        block.attn.kv_cache = None
    return torch.cat(out, dim=-1)


def top_k_top_p_filtering(logits, top_k=0, top_p=1.0, filter_value=-float("Inf")):
    if top_k > 0:
        top_k = min(top_k, logits.size(-1))
        indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
        logits = logits.masked_fill(indices_to_remove, filter_value)
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        sorted_indices_to_remove = cumulative_probs > top_p
        sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
        sorted_indices_to_remove[..., 0] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices,
                                                             sorted_indices_to_remove)
        logits = logits.masked_fill(indices_to_remove, filter_value)
    return logits


@torch.no_grad()
def generate(model, ids, steps, use_cache=True, temperature=1.0, top_k=0, top_p=1.0,
             do_sample=False, generator=None):
    past = None
    out = ids
    inp = ids
    for _ in range(steps):
        if use_cache:
            logits, past = model(inp, past_key_values=past, use_cache=True)
        else:
            logits, _ = model(out)
        logits = logits[:, -1, :] / temperature
        if do_sample:
            logits = top_k_top_p_filtering(logits, top_k=top_k, top_p=top_p)
            probs = F.softmax(logits, dim=-1)
            next_token = torch.multinomial(probs, num_samples=1, generator=generator)
        else:
            next_token = torch.argmax(logits, dim=-1, keepdim=True)
        out = torch.cat([out, next_token], dim=-1)
        inp = next_token
    return out


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    vocab, block = 13, 16
    # a periodic language: each sequence counts up by its own stride, mod vocab
    rng = np.random.default_rng(12)
    starts, strides = rng.integers(0, vocab, 64), rng.integers(1, 4, 64)
    data = (starts[:, None] + strides[:, None] * np.arange(block + 1)[None]) % vocab
    data = torch.from_numpy(data.astype(np.int64))

    model = GPT2(vocab, ctx=32)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)

    def train_step(x, y):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    model.train()
    losses = []
    for epoch in range(4):
        for batch in data.split(16):
            losses.append(train_step(batch[:, :-1], batch[:, 1:]).item())

    model.eval()
    prompt = data[:3, :4]
    greedy_cache = generate(model, prompt, 10, use_cache=True)
    greedy_full = generate(model, prompt, 10, use_cache=False)
    # the cached logits of the last step equal the uncached forward's
    with torch.no_grad():
        full_logits, presents = model(greedy_cache, use_cache=True)
        logits_a, past = model(greedy_cache[:, :-1], use_cache=True)
        logits_b, _ = model(greedy_cache[:, -1:], past_key_values=past, use_cache=True)
    decode = torch.compile(decode_one_token) if compile else decode_one_token
    static = generate_static(model, prompt, 10, decode)
    g = torch.Generator().manual_seed(1234)
    sampled = generate(model, prompt, 10, do_sample=True, temperature=0.8, top_k=5, top_p=0.9,
                       generator=g)
    filtered = top_k_top_p_filtering(full_logits[:, -1, :].clone(), top_k=4, top_p=0.8)
    values = {"greedy_cache": greedy_cache, "greedy_full": greedy_full,
              "same_tokens": bool(torch.equal(greedy_cache, greedy_full)),
              "static_same": bool(torch.equal(static, greedy_cache)),
              "cache_len": presents[0][0].size(-2),
              "last_logits": logits_b[:, -1], "full_last": full_logits[:, -1],
              "sampled": sampled, "kept_per_row": (filtered > -float("inf")).sum(-1),
              "greedy_correct": int((greedy_cache[:, 4:] ==
                                     data[:3, 4:14]).sum())}
    return {"losses": losses, "values": values, "initial_state": initial}
