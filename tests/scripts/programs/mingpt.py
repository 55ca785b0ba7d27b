"""A character-level GPT in the style of minGPT (pytorch/examples distributed/minGPT-ddp):
hand-written causal self-attention with a tril mask buffer, a block built on
nn.MultiheadAttention with a float attn_mask, weight init through `apply`, decay/no-decay
parameter groups for AdamW, gradient clipping, a warm-up scheduler stepped per batch, a
snapshot saved with torch.save mid-run and training resumed from it in a fresh model, and
greedy generation with top-k cropping. Dropout is 0 so every step is deterministic."""
import io
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset


@dataclass
class GPTConfig:
    vocab_size: int = None
    block_size: int = 16
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    pdrop: float = 0.0


class CharDataset(Dataset):
    def __init__(self, text, block_size):
        chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.itos = {i: ch for i, ch in enumerate(chars)}
        self.vocab_size = len(chars)
        self.block_size = block_size
        self.data = text

    def __len__(self):
        return len(self.data) - self.block_size

    def __getitem__(self, idx):
        chunk = self.data[idx:idx + self.block_size + 1]
        dix = [self.stoi[s] for s in chunk]
        x = torch.tensor(dix[:-1], dtype=torch.long)
        y = torch.tensor(dix[1:], dtype=torch.long)
        return x, y


class NewGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) *
                                           (x + 0.044715 * torch.pow(x, 3.0))))


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.pdrop)
        self.resid_dropout = nn.Dropout(config.pdrop)
        self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size))
                             .view(1, 1, config.block_size, config.block_size))
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MultiheadAttentionLayer(nn.Module):
    """The DDP example's variant: nn.MultiheadAttention given the tril buffer itself as a float
    attn_mask (which torch adds to the scores: ones below the diagonal, not a causal mask)."""

    def __init__(self, config):
        super().__init__()
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_drop = nn.Dropout(config.pdrop)
        self.register_buffer("mask", torch.tril(torch.ones(config.block_size, config.block_size))
                             .view(1, 1, config.block_size, config.block_size))
        self.attn = nn.MultiheadAttention(embed_dim=config.n_embd, num_heads=config.n_head,
                                          dropout=config.pdrop, batch_first=True)

    def forward(self, x):
        _, seq_size, _ = x.size()
        y = self.attn(x, x, x, attn_mask=self.mask[0, 0, :seq_size, :seq_size])[0]
        return self.resid_drop(self.c_proj(y))


class Block(nn.Module):
    def __init__(self, config, attention):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.ModuleDict(dict(
            c_fc=nn.Linear(config.n_embd, 4 * config.n_embd),
            c_proj=nn.Linear(4 * config.n_embd, config.n_embd),
            act=NewGELU(),
            dropout=nn.Dropout(config.pdrop),
        ))
        m = self.mlp
        self.mlpf = lambda x: m.dropout(m.c_proj(m.act(m.c_fc(x))))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlpf(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.block_size = config.block_size
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.block_size, config.n_embd))
        self.drop = nn.Dropout(config.pdrop)
        attentions = [CausalSelfAttention, MultiheadAttentionLayer]
        self.blocks = nn.Sequential(*[Block(config, attentions[i % 2])
                                      for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.n_params = sum(p.numel() for p in self.blocks.parameters())

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.block_size, f"Cannot forward sequence of length {t}"
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, :t, :])
        x = self.blocks(x)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                   ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.block_size else idx[:, -self.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, top_k)
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
            _, idx_next = torch.topk(probs, k=1, dim=-1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def create_optimizer(model, learning_rate, weight_decay):
    decay, no_decay = set(), set()
    whitelist_weight_modules = (torch.nn.Linear, )
    blacklist_weight_modules = (torch.nn.LayerNorm, torch.nn.Embedding)
    for mn, m in model.named_modules():
        for pn, p in m.named_parameters():
            fpn = '%s.%s' % (mn, pn) if mn else pn
            if pn.endswith('bias'):
                no_decay.add(fpn)
            elif pn.endswith('weight') and isinstance(m, whitelist_weight_modules):
                decay.add(fpn)
            elif pn.endswith('in_proj_weight'):
                decay.add(fpn)
            elif pn.endswith('weight') and isinstance(m, blacklist_weight_modules):
                no_decay.add(fpn)
            elif pn.endswith('pos_emb'):
                no_decay.add(fpn)
    param_dict = {pn: p for pn, p in model.named_parameters()}
    assert len(decay & no_decay) == 0
    assert len(param_dict.keys() - (decay | no_decay)) == 0, param_dict.keys() - (decay | no_decay)
    optim_groups = [
        {"params": [param_dict[pn] for pn in sorted(list(decay))], "weight_decay": weight_decay},
        {"params": [param_dict[pn] for pn in sorted(list(no_decay))], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=(0.9, 0.95))


TEXT = ("the quick brown fox jumps over the lazy dog. " * 3 +
        "a stitch in time saves nine; the early bird catches the worm. " * 2)


def make_trainer(model, optimizer, compile):
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))

    def train_step(x, y):
        logits, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        return loss

    return (torch.compile(train_step) if compile else train_step), scheduler


def main(seed=0, compile=False, initial_state=None, epochs=2):
    torch.manual_seed(seed)
    dataset = CharDataset(TEXT, block_size=16)
    config = GPTConfig(vocab_size=dataset.vocab_size)
    model = GPT(config)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = create_optimizer(model, learning_rate=3e-3, weight_decay=0.1)
    train_step, scheduler = make_trainer(model, optimizer, compile)
    loader = DataLoader(dataset, batch_size=32, shuffle=False, drop_last=True)

    losses = []
    for epoch in range(epochs):
        model.train()
        for it, (x, y) in enumerate(loader):
            loss = train_step(x, y)
            losses.append(loss.item())

    # snapshot, then resume in a fresh model and optimizer as the DDP trainer does
    buffer = io.BytesIO()
    torch.save({"MODEL_STATE": model.state_dict(), "OPTIMIZER_STATE": optimizer.state_dict(),
                "SCHEDULER_STATE": scheduler.state_dict(), "EPOCHS_RUN": epochs}, buffer)
    buffer.seek(0)
    snapshot = torch.load(buffer, map_location="cpu")
    resumed = GPT(config)
    resumed.load_state_dict(snapshot["MODEL_STATE"])
    optimizer = create_optimizer(resumed, learning_rate=3e-3, weight_decay=0.1)
    optimizer.load_state_dict(snapshot["OPTIMIZER_STATE"])
    train_step, scheduler = make_trainer(resumed, optimizer, compile)
    scheduler.load_state_dict(snapshot["SCHEDULER_STATE"])
    for it, (x, y) in enumerate(loader):
        if it == 3:
            break
        losses.append(train_step(x, y).item())

    resumed.eval()
    prompt = torch.tensor([[dataset.stoi[c] for c in "the "]], dtype=torch.long)
    out = resumed.generate(prompt, max_new_tokens=20, top_k=5)[0]
    completion = ''.join(dataset.itos[int(i)] for i in out)
    return {"losses": losses, "initial_state": initial, "completion": completion,
            "n_params": model.n_params}


if __name__ == "__main__":
    print(main())
