"""Direct Preference Optimization as the TRL-style trainers and the paper's reference code write
it: a tiny causal LM is first fine-tuned (SFT) on the chosen answers, then copied into a frozen
reference model (`copy.deepcopy`, `requires_grad_(False)`, `eval()`, its forward under
`torch.no_grad()`); prompts and answers are right-padded with a pad id; per-token log-probs are
`log_softmax` then `gather` on the shifted labels, with a loss mask (prompt and padding left out,
labels set to 0 there so `gather` stays in range) and summed per sequence; the chosen and
rejected halves of one concatenated batch; the sigmoid DPO loss `-F.logsigmoid(beta * (...))`
with the implicit rewards detached, reward accuracies and margins logged with `.item()`."""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD = 0


class TinyLM(nn.Module):
    def __init__(self, vocab, dim=16, ctx=12):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(1, ctx, dim))
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("causal", torch.triu(torch.ones(ctx, ctx, dtype=torch.bool), 1))

    def forward(self, ids, attention_mask):
        t = ids.shape[1]
        x = self.tok(ids) + self.pos[:, :t]
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=self.causal[:t, :t],
                         key_padding_mask=~attention_mask.bool(), need_weights=False)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


def get_batch_logps(logits, labels, loss_mask):
    """Sum of the log-probabilities of `labels` under `logits` where `loss_mask` is set."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = loss_mask[:, 1:]
    labels[loss_mask == 0] = 0                 # a dummy token where the mask is off
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2,
                                   index=labels.unsqueeze(2)).squeeze(2)
    return (per_token_logps * loss_mask).sum(-1)


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    pi_logratios = pi_chosen - pi_rejected
    ref_logratios = ref_chosen - ref_rejected
    logits = pi_logratios - ref_logratios
    losses = -F.logsigmoid(beta * logits)
    chosen_rewards = beta * (pi_chosen - ref_chosen).detach()
    rejected_rewards = beta * (pi_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def make_data(rng, n, vocab, ctx):
    """Prompts of 3-5 tokens; the chosen answer counts up from the prompt's last token, the
    rejected one counts down; right padding to `ctx`."""
    chosen, rejected, mask_c, mask_r, loss_c, loss_r = [], [], [], [], [], []
    for _ in range(n):
        p = list(rng.integers(1, vocab, size=rng.integers(3, 6)))
        a_len = int(rng.integers(3, ctx - len(p) + 1))
        good = [1 + (p[-1] + i) % (vocab - 1) for i in range(a_len)]
        bad = [1 + (p[-1] - 2 - i) % (vocab - 1) for i in range(a_len)]
        for seq, ids, att, lm in ((good, chosen, mask_c, loss_c), (bad, rejected, mask_r, loss_r)):
            full = p + seq
            pad = ctx - len(full)
            ids.append(full + [PAD] * pad)
            att.append([1] * len(full) + [0] * pad)
            lm.append([0] * len(p) + [1] * len(seq) + [0] * pad)
    as_t = lambda rows: torch.tensor(np.array(rows, dtype=np.int64))
    return (as_t(chosen), as_t(rejected), as_t(mask_c), as_t(mask_r), as_t(loss_c).float(),
            as_t(loss_r).float())


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    vocab, ctx, beta = 9, 12, 0.5
    rng = np.random.default_rng(11)
    chosen, rejected, att_c, att_r, lm_c, lm_r = make_data(rng, 32, vocab, ctx)

    policy = TinyLM(vocab, ctx=ctx)
    if initial_state is not None:
        policy.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in policy.state_dict().items()}

    # supervised fine-tuning on the chosen answers first
    sft_opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for ids, att, lm in zip(chosen.split(8), att_c.split(8), lm_c.split(8)):
        logits = policy(ids, att)
        nll = -get_batch_logps(logits, ids, lm).sum() / lm[:, 1:].sum()
        sft_opt.zero_grad()
        nll.backward()
        sft_opt.step()
        losses.append(nll.item())

    ref_model = copy.deepcopy(policy)
    ref_model.requires_grad_(False)
    ref_model.eval()
    ref_snapshot = [p.detach().clone() for p in ref_model.parameters()]
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=1e-3)

    def concatenated_forward(model, ids, att, lm):
        logits = model(ids, att).float()
        logps = get_batch_logps(logits, ids, lm)
        n = ids.shape[0] // 2
        return logps[:n], logps[n:]

    def train_step(ids, att, lm):
        pi_c, pi_r = concatenated_forward(policy, ids, att, lm)
        with torch.no_grad():
            ref_c, ref_r = concatenated_forward(ref_model, ids, att, lm)
        per, r_c, r_r = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)
        loss = per.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss, r_c, r_r

    if compile:
        train_step = torch.compile(train_step)
    accuracies, margins = [], []
    for epoch in range(3):
        for i in range(0, 32, 8):
            ids = torch.cat([chosen[i:i + 8], rejected[i:i + 8]])
            att = torch.cat([att_c[i:i + 8], att_r[i:i + 8]])
            lm = torch.cat([lm_c[i:i + 8], lm_r[i:i + 8]])
            loss, r_c, r_r = train_step(ids, att, lm)
            losses.append(loss.item())
            accuracies.append((r_c > r_r).float().mean().item())
            margins.append((r_c - r_r).mean().item())

    with torch.no_grad():
        pc, pr = concatenated_forward(policy, torch.cat([chosen, rejected]),
                                      torch.cat([att_c, att_r]), torch.cat([lm_c, lm_r]))
    # the first step's rewards are zero (the policy is the reference): whether chosen > rejected
    # there is rounding, so its accuracy is left out
    values = {"accuracies": torch.tensor(accuracies[1:]), "margins": torch.tensor(margins),
              "final_logratio": pc - pr,
              "ref_frozen": all(not p.requires_grad and p.grad is None
                                for p in ref_model.parameters()),
              "ref_unchanged": all(torch.equal(a, b) for a, b in
                                   zip(ref_model.parameters(), ref_snapshot)),
              "policy_moved": not all(torch.equal(a, b) for a, b in
                                      zip(policy.parameters(), ref_snapshot))}
    return {"losses": losses, "values": values, "initial_state": initial}
