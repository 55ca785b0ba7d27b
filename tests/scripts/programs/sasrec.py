"""SASRec (self-attentive sequential recommendation) as its PyTorch ports (pmixer's
SASRec.pytorch and the RecBole-style rewrites) write it: item embeddings with `padding_idx=0`
scaled by sqrt(d), learned positions, a timeline mask multiplied in after every block, causal
`nn.MultiheadAttention` with a bool upper-triangle `attn_mask` and a `key_padding_mask`, point-wise
feed-forward Conv1d layers, `BCEWithLogitsLoss` on the positive next item against one sampled
negative, taken only where the target is not padding through `torch.where(pos != 0)` indices;
Adam; HR@10 and NDCG@10 over 1 true item and sampled negatives, the rank by `argsort` twice. The
training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn

N_ITEMS, MAXLEN = 40, 8


class PointWiseFeedForward(nn.Module):
    def __init__(self, hidden_units, dropout_rate):
        super().__init__()
        self.conv1 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout1 = nn.Dropout(p=dropout_rate)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout2 = nn.Dropout(p=dropout_rate)

    def forward(self, inputs):
        outputs = self.dropout2(self.conv2(self.relu(self.dropout1(
            self.conv1(inputs.transpose(-1, -2))))))
        outputs = outputs.transpose(-1, -2)     # as Conv1D requires (N, C, Length)
        return outputs + inputs


class SASRec(nn.Module):
    def __init__(self, item_num, hidden_units=16, num_blocks=2, num_heads=2, dropout_rate=0.0):
        super().__init__()
        self.item_emb = nn.Embedding(item_num + 1, hidden_units, padding_idx=0)
        self.pos_emb = nn.Embedding(MAXLEN, hidden_units)
        self.emb_dropout = nn.Dropout(p=dropout_rate)
        self.attention_layernorms = nn.ModuleList()
        self.attention_layers = nn.ModuleList()
        self.forward_layernorms = nn.ModuleList()
        self.forward_layers = nn.ModuleList()
        self.last_layernorm = nn.LayerNorm(hidden_units, eps=1e-8)
        for _ in range(num_blocks):
            self.attention_layernorms.append(nn.LayerNorm(hidden_units, eps=1e-8))
            self.attention_layers.append(
                nn.MultiheadAttention(hidden_units, num_heads, dropout_rate, batch_first=True))
            self.forward_layernorms.append(nn.LayerNorm(hidden_units, eps=1e-8))
            self.forward_layers.append(PointWiseFeedForward(hidden_units, dropout_rate))

    def log2feats(self, log_seqs):
        seqs = self.item_emb(log_seqs)
        seqs = seqs * self.item_emb.embedding_dim ** 0.5
        positions = torch.arange(log_seqs.shape[1]).unsqueeze(0).expand_as(log_seqs)
        seqs = seqs + self.pos_emb(positions)
        seqs = self.emb_dropout(seqs)

        padding = log_seqs == 0
        timeline_mask = ~padding
        seqs = seqs * timeline_mask.unsqueeze(-1)          # broadcast in last dim
        tl = seqs.shape[1]
        # True where attention is not allowed: the future
        attention_mask = ~torch.tril(torch.ones((tl, tl), dtype=torch.bool))
        for i in range(len(self.attention_layers)):
            Q = self.attention_layernorms[i](seqs)
            mha_outputs, _ = self.attention_layers[i](Q, seqs, seqs, attn_mask=attention_mask,
                                                      key_padding_mask=padding,
                                                      need_weights=False)
            seqs = Q + mha_outputs
            seqs = self.forward_layernorms[i](seqs)
            seqs = self.forward_layers[i](seqs)
            seqs = seqs * timeline_mask.unsqueeze(-1)
        return self.last_layernorm(seqs)

    def forward(self, log_seqs, pos_seqs, neg_seqs):
        log_feats = self.log2feats(log_seqs)
        pos_embs = self.item_emb(pos_seqs)
        neg_embs = self.item_emb(neg_seqs)
        pos_logits = (log_feats * pos_embs).sum(dim=-1)
        neg_logits = (log_feats * neg_embs).sum(dim=-1)
        return pos_logits, neg_logits

    def predict(self, log_seqs, item_indices):
        log_feats = self.log2feats(log_seqs)
        final_feat = log_feats[:, -1, :]              # only the last position
        item_embs = self.item_emb(item_indices)       # (B, I, C)
        return item_embs.matmul(final_feat.unsqueeze(-1)).squeeze(-1)


def make_users(rng, n_users):
    """Each user walks the item ring with a personal stride: the next item follows the last."""
    users = []
    for _ in range(n_users):
        length = int(rng.integers(4, MAXLEN + 3))
        start, stride = int(rng.integers(1, N_ITEMS + 1)), int(rng.integers(1, 4))
        users.append([(start - 1 + j * stride) % N_ITEMS + 1 for j in range(length)])
    return users


def sample_batch(rng, users):
    """Left-padded input, next-item targets and one negative per position, as SASRec's
    sampler builds them (the last item is held out for evaluation)."""
    seq = np.zeros((len(users), MAXLEN), np.int64)
    pos, neg = np.zeros_like(seq), np.zeros_like(seq)
    for u, items in enumerate(users):
        train = items[:-1]
        nxt, idx = train[-1], MAXLEN - 1
        for i in reversed(train[:-1]):
            seq[u, idx], pos[u, idx] = i, nxt
            if nxt != 0:
                n = int(rng.integers(1, N_ITEMS + 1))
                while n in items:
                    n = int(rng.integers(1, N_ITEMS + 1))
                neg[u, idx] = n
            nxt = i
            idx -= 1
            if idx == -1:
                break
    return torch.from_numpy(seq), torch.from_numpy(pos), torch.from_numpy(neg)


def evaluate(model, users, rng, n_negatives=20):
    seqs, candidates = [], []
    for items in users:
        history = items[:-1][-MAXLEN:]
        seqs.append([0] * (MAXLEN - len(history)) + history)
        negatives = [i for i in rng.permutation(np.arange(1, N_ITEMS + 1)).tolist()
                     if i not in items][:n_negatives]
        candidates.append([items[-1]] + negatives)
    seqs, candidates = torch.tensor(seqs), torch.tensor(candidates)
    predictions = -model.predict(seqs, candidates)
    ranks = predictions.argsort(dim=1).argsort(dim=1)[:, 0]     # the true item's rank
    hit = ranks < 10
    ndcg = torch.where(hit, 1 / torch.log2(ranks.float() + 2), torch.zeros(()))
    return hit.float().mean(), ndcg.mean(), ranks


def main(seed=0, compile=False, initial_state=None, indices_outside=False):
    torch.manual_seed(seed)
    rng = np.random.default_rng(5)
    users = make_users(rng, 48)
    model = SASRec(N_ITEMS)
    for name, param in model.named_parameters():
        try:
            nn.init.xavier_normal_(param.data)
        except ValueError:
            pass                                       # ignore failed init (1-d params)
    model.pos_emb.weight.data[0, :] = 0
    model.item_emb.weight.data[0, :] = 0
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    bce_criterion = nn.BCEWithLogitsLoss()
    adam_optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.98))

    def train_step(u_seq, pos, neg, indices=None):
        pos_logits, neg_logits = model(u_seq, pos, neg)
        pos_labels = torch.ones(pos_logits.shape)
        neg_labels = torch.zeros(neg_logits.shape)
        adam_optimizer.zero_grad()
        if indices is None:
            indices = torch.where(pos != 0)
        loss = bce_criterion(pos_logits[indices], pos_labels[indices])
        loss += bce_criterion(neg_logits[indices], neg_labels[indices])
        for param in model.item_emb.parameters():
            loss += 1e-4 * torch.norm(param)
        loss.backward()
        adam_optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    sampler = np.random.default_rng(8)
    batches = [sample_batch(sampler, users[i:i + 16]) for i in range(0, len(users), 16)]
    losses = []
    for epoch in range(4):
        for u_seq, pos, neg in batches:
            # the targets' positions found by the data loader: the step's shapes are fixed
            indices = torch.where(pos != 0) if indices_outside else None
            losses.append(train_step(u_seq, pos, neg, indices).item())

    model.eval()
    with torch.no_grad():
        hr, ndcg, ranks = evaluate(model, users, np.random.default_rng(1))
        seq, pos, neg = batches[0]
        feats = model.log2feats(seq)
    values = {"hr_at_10": hr, "ndcg_at_10": ndcg, "ranks": ranks,
              "padded_feats_zero": bool((feats[seq == 0] == model.last_layernorm.bias).all()),
              "pad_row": model.item_emb.weight[0].detach().clone(),
              "n_targets": int((pos != 0).sum())}
    return {"losses": losses, "values": values, "initial_state": initial}
