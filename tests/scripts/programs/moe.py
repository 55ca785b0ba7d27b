"""A Mixture-of-Experts feed-forward layer as Switch/GShard-style research code writes it:
a router's logits, `topk` of the experts per token with a `softmax` over the chosen ones,
tokens routed per expert by `torch.nonzero` of a boolean mask (and `torch.where`'s index form),
an expert capacity that drops the overflow, each expert run on its `index_select`ed tokens and
the weighted outputs combined with `index_add_`, plus the load-balancing auxiliary loss
(fraction of tokens per expert times mean router probability). A second layer dispatches as
GShard/Switch's static-shape code does instead: one-hot masks, each token's position in its
expert's queue by `cumsum`, the capacity mask, and `einsum` dispatch and combine tensors (no
data-dependent shapes, so it compiles). A tiny token classifier on top; the training step is
the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MoE(nn.Module):
    def __init__(self, dim, hidden, num_experts=4, k=2, capacity_factor=1.0):
        super().__init__()
        self.num_experts, self.k, self.capacity_factor = num_experts, k, capacity_factor
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(num_experts))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n_tokens = x.shape[0]
        logits = self.router(x)
        probs = F.softmax(logits, dim=-1)
        top_vals, top_idx = torch.topk(logits, self.k, dim=-1)
        gates = F.softmax(top_vals, dim=-1)
        capacity = int(self.capacity_factor * n_tokens * self.k / self.num_experts)

        out = torch.zeros_like(x)
        dropped = 0
        for e, expert in enumerate(self.experts):
            mask = top_idx == e                              # (tokens, k)
            token_idx, slot = torch.nonzero(mask, as_tuple=True)
            if e % 2:
                token_idx, slot = torch.where(mask)
            if token_idx.numel() > capacity:
                dropped += token_idx.numel() - capacity
                token_idx, slot = token_idx[:capacity], slot[:capacity]
            if token_idx.numel() == 0:
                continue
            expert_in = x.index_select(0, token_idx)
            weight = gates[token_idx, slot].unsqueeze(-1)
            out.index_add_(0, token_idx, expert(expert_in) * weight)

        # Switch Transformer's balancing loss: num_experts * sum(f_i * P_i)
        chosen = F.one_hot(top_idx[:, 0], self.num_experts).float()
        fraction = chosen.mean(dim=0)
        mean_prob = probs.mean(dim=0)
        aux_loss = self.num_experts * torch.sum(fraction * mean_prob)
        return out.reshape(shape), aux_loss, dropped


class DenseDispatchMoE(nn.Module):
    def __init__(self, dim, hidden, num_experts=4, capacity_factor=1.25):
        super().__init__()
        self.num_experts, self.capacity_factor = num_experts, capacity_factor
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.w_in = nn.Parameter(torch.randn(num_experts, dim, hidden) * dim ** -0.5)
        self.w_out = nn.Parameter(torch.randn(num_experts, hidden, dim) * hidden ** -0.5)

    def forward(self, x):
        b, s, d = x.shape
        tokens = x.reshape(-1, d)
        probs = self.router(tokens).softmax(dim=-1)
        gate, expert = probs.max(dim=-1)
        capacity = int(self.capacity_factor * tokens.shape[0] / self.num_experts)
        mask = F.one_hot(expert, self.num_experts).float()              # (T, E)
        position = (torch.cumsum(mask, dim=0) - 1) * mask               # place in queue
        keep = mask * (position < capacity).float()
        place = position.sum(-1).long().clamp(max=capacity)
        slot = F.one_hot(place, capacity + 1)[:, :capacity].float()
        dispatch = keep.unsqueeze(-1) * slot.unsqueeze(1)               # (T, E, C)
        combine = dispatch * gate[:, None, None]
        expert_in = torch.einsum("tec,td->ecd", dispatch, tokens)
        h = F.relu(torch.bmm(expert_in, self.w_in))
        expert_out = torch.bmm(h, self.w_out)
        out = torch.einsum("tec,ecd->td", combine, expert_out)
        aux = self.num_experts * (mask.mean(0) * probs.mean(0)).sum()
        return out.reshape(b, s, d), aux


class Classifier(nn.Module):
    def __init__(self, vocab=16, dim=8, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.moe = MoE(dim, 16)
        self.norm = nn.LayerNorm(dim)
        self.dense_moe = DenseDispatchMoE(dim, 16)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens, routing="indexed"):
        h = self.embed(tokens)
        if routing == "indexed":
            moe_out, aux, dropped = self.moe(h)
        else:
            (moe_out, aux), dropped = self.dense_moe(h), 0
        h = self.norm(h + moe_out)
        return self.head(h.mean(dim=1)), aux, dropped


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(4)
    tokens = torch.from_numpy(rng.integers(0, 16, (48, 6)))
    labels = tokens[:, 0] % 3

    model = Classifier()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def train_step(x, y, routing):
        optimizer.zero_grad(set_to_none=True)
        logits, aux, dropped = model(x, routing)
        loss = F.cross_entropy(logits, y) + 0.01 * aux
        loss.backward()
        optimizer.step()
        return loss, dropped

    if compile:
        train_step = torch.compile(train_step)
    losses, drops = [], []
    for routing in ("dense", "indexed"):
        for x, y in zip(tokens.split(12), labels.split(12)):
            loss, dropped = train_step(x, y, routing)
            losses.append(loss.item())
            drops.append(dropped)
    values = {"router": model.moe.router.weight.detach().clone(),
              "expert0": model.moe.experts[0][0].weight.detach().clone(),
              "dense_w_in": model.dense_moe.w_in.detach().clone(),
              "drops": torch.tensor(drops)}
    return {"losses": losses, "values": values, "initial_state": initial}
