"""A small GPT trained the way nanoGPT's train.py trains one: a `GPTConfig` dataclass, a
LayerNorm with an optional bias through `F.layer_norm(x, weight.shape, ...)`, causal attention
through `F.scaled_dot_product_attention(is_causal=True)`, the token embedding tied to the head,
GPT-2's scaled init of the residual projections, AdamW decay groups chosen by `p.dim()` with the
`fused` probe through `inspect.signature`, the dtype table naming `torch.bfloat16`, a
`nullcontext()` in place of autocast on the CPU, a disabled `torch.cuda.amp.GradScaler`,
`model = torch.compile(model)`, batches cut from a `np.memmap` of uint16 tokens with
`torch.from_numpy`, gradient accumulation, `scaler.unscale_` + clipping, a cosine learning rate
with warm-up written into the param groups, an `@torch.no_grad()` estimate of train/val loss,
a checkpoint of the (compiled) model's state_dict resumed in a fresh model after stripping
`_orig_mod.`, and generation with `x[:, [-1], :]`, topk cropping and `multinomial`.

Batch offsets come from NumPy's generator (nanoGPT draws them with `torch.randint`, whose
stream kiln does not reproduce); with dropout 0 every step is deterministic.
"""
import inspect
import math
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

TEXT = ("a kiln fires clay into stone; the potter loads the kiln, seals the door and waits. "
        "slow heat drives the water out, then the clay turns to ceramic and rings when struck. ")


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be left out."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(self.n_embd, dim=2)
        heads = lambda t: t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q, k, v = heads(q), heads(k), heads(v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(cfg.n_embd, cfg.bias), SelfAttention(cfg)
        self.ln_2, self.mlp = LayerNorm(cfg.n_embd, cfg.bias), FeedForward(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    dropout: float = 0.0
    bias: bool = False


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.n_embd, cfg.bias)))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight      # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def get_num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size, f"sequence of {t} > block size"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                   ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])     # a list index keeps the time dim
            loss = None
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        groups = [{"params": [p for p in params.values() if p.dim() >= 2],
                   "weight_decay": weight_decay},
                  {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0}]
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = dict(fused=True) if fused_available and device_type == "cuda" else dict()
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            cond = idx if idx.size(1) <= self.config.block_size \
                else idx[:, -self.config.block_size:]
            logits, _ = self(cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


def main(seed=0, compile=False, initial_state=None, max_iters=12, resume_iters=4):
    # the configuration globals of train.py, as locals
    batch_size, block_size, gradient_accumulation_steps = 4, 16, 2
    learning_rate, min_lr, warmup_iters, lr_decay_iters = 3e-3, 3e-4, 3, 12
    weight_decay, beta1, beta2, grad_clip = 0.1, 0.9, 0.95, 1.0
    eval_interval, eval_iters, device, dtype = 6, 2, "cpu", "float32"

    torch.manual_seed(seed)
    device_type = "cuda" if "cuda" in device else "cpu"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
               "float16": torch.float16}[dtype]
    ctx = nullcontext() if device_type == "cpu" else \
        torch.amp.autocast(device_type=device_type, dtype=ptdtype)

    # prepare: the text's characters as uint16 token files, as nanoGPT's prepare.py writes them
    chars = sorted(set(TEXT))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in TEXT], dtype=np.uint16)
    data_dir = tempfile.mkdtemp()
    split = int(0.8 * len(ids))
    ids[:split].tofile(os.path.join(data_dir, "train.bin"))
    ids[split:].tofile(os.path.join(data_dir, "val.bin"))
    offsets = np.random.default_rng(seed)

    def get_batch(split):
        data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = offsets.integers(0, len(data) - block_size, size=batch_size)
        x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64))
                         for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64))
                         for i in ix])
        return x.to(device), y.to(device)

    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size, bias=False,
                      vocab_size=len(chars), dropout=0.0)
    model = GPT(GPTConfig(**model_args))
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(device)
    scaler = torch.cuda.amp.GradScaler(enabled=(dtype == "float16"))
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2),
                                           device_type)
    if compile:
        model = torch.compile(model)

    def get_lr(it):
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > lr_decay_iters:
            return min_lr
        ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

    def train(model, optimizer, iter_num, stop, best_val_loss, losses, evals):
        @torch.no_grad()
        def estimate_loss():
            out = {}
            model.eval()
            for split in ["train", "val"]:
                split_losses = torch.zeros(eval_iters)
                for k in range(eval_iters):
                    X, Y = get_batch(split)
                    with ctx:
                        _, loss = model(X, Y)
                    split_losses[k] = loss.item()
                out[split] = split_losses.mean()
            model.train()
            return out

        checkpoint_path = None
        X, Y = get_batch("train")
        while True:
            lr = get_lr(iter_num)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            if iter_num % eval_interval == 0:
                est = estimate_loss()
                evals.append((float(est["train"]), float(est["val"])))
                if est["val"] < best_val_loss:
                    best_val_loss = est["val"]
                    if iter_num > 0:
                        checkpoint = {"model": model.state_dict(),
                                      "optimizer": optimizer.state_dict(),
                                      "model_args": model_args, "iter_num": iter_num,
                                      "best_val_loss": best_val_loss,
                                      "config": {"learning_rate": learning_rate,
                                                 "batch_size": batch_size}}
                        checkpoint_path = os.path.join(data_dir, "ckpt.pt")
                        torch.save(checkpoint, checkpoint_path)
            for micro_step in range(gradient_accumulation_steps):
                with ctx:
                    logits, loss = model(X, Y)
                    loss = loss / gradient_accumulation_steps
                X, Y = get_batch("train")
                scaler.scale(loss).backward()
            if grad_clip != 0.0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item() * gradient_accumulation_steps)
            iter_num += 1
            if iter_num > stop:
                return checkpoint_path, iter_num

    losses, evals = [], []
    checkpoint_path, _ = train(model, optimizer, 0, max_iters, 1e9, losses, evals)
    saved_keys = None

    # resume from the checkpoint in a fresh model, as init_from='resume' does
    checkpoint = torch.load(checkpoint_path, map_location=device)
    state_dict = checkpoint["model"]
    saved_keys = sorted(state_dict)
    unwanted_prefix = "_orig_mod."
    for k, v in list(state_dict.items()):
        if k.startswith(unwanted_prefix):
            state_dict[k[len(unwanted_prefix):]] = state_dict.pop(k)
    resumed = GPT(GPTConfig(**checkpoint["model_args"]))
    resumed.load_state_dict(state_dict)
    optimizer = resumed.configure_optimizers(weight_decay, learning_rate, (beta1, beta2),
                                             device_type)
    optimizer.load_state_dict(checkpoint["optimizer"])
    start = checkpoint["iter_num"]
    if compile:
        resumed = torch.compile(resumed)
    train(resumed, optimizer, start, start + resume_iters, checkpoint["best_val_loss"],
          losses, evals)

    generator = resumed._orig_mod if compile else resumed
    generator.eval()
    prompt = torch.tensor([[stoi[c] for c in "the "]], dtype=torch.long)
    out = generator.generate(prompt, max_new_tokens=12, top_k=1)[0].tolist()
    return {"losses": losses, "evals": evals, "initial_state": initial,
            "completion": "".join(chars[i] for i in out), "saved_keys": saved_keys,
            "resumed_from": start, "n_params": model.get_num_params()}


if __name__ == "__main__":
    print(main())
