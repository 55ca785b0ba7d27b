"""makemore-style character models (Karpathy's "zero to hero" notebooks) on a made-up list of
names: bigram counts in `torch.zeros((27, 27), dtype=torch.int32)` filled by `N[ix1, ix2] += 1`,
smoothed and normalised in place, names sampled with `torch.multinomial` from a seeded
`torch.Generator`, the average negative log likelihood; then an MLP with a hand-made embedding
table `C[X]`, a hand-written BatchNorm whose running statistics are updated under `no_grad`,
`F.cross_entropy`, `p.grad = None` and `p.data += -lr * p.grad` updates, and one step's manual
backprop (the "backprop ninja" exercise) checked against autograd through `retain_grad()`.
The MLP's forward/backward/update is the compiled function."""
import numpy as np
import torch
import torch.nn.functional as F


def make_words(rng, n):
    syllables = ["an", "el", "ma", "ri", "so", "ka", "li", "na", "to", "be", "ja", "ne"]
    return ["".join(rng.choice(syllables, rng.integers(1, 4))) + rng.choice(["", "a", "n", "y"])
            for _ in range(n)]


def build_dataset(words, stoi, block_size):
    X, Y = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + ".":
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(X), torch.tensor(Y)


def cmp(s, dt, t):
    ex = torch.all(dt == t.grad).item()
    app = torch.allclose(dt, t.grad)
    maxdiff = (dt - t.grad).abs().max().item()
    return ex, app, maxdiff


def main(seed=0, compile=False, initial_state=None):
    words = make_words(np.random.default_rng(4), 120)
    chars = sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz"))
    stoi = {s: i + 1 for i, s in enumerate(chars)}
    stoi["."] = 0
    itos = {i: s for s, i in stoi.items()}

    # --- bigrams
    N = torch.zeros((27, 27), dtype=torch.int32)
    for w in words:
        chs = ["."] + list(w) + ["."]
        for ch1, ch2 in zip(chs, chs[1:]):
            N[stoi[ch1], stoi[ch2]] += 1
    P = (N + 1).float()
    P /= P.sum(1, keepdims=True)
    g = torch.Generator().manual_seed(2147483647)
    samples = []
    for i in range(5):
        out, ix = [], 0
        while True:
            p = P[ix]
            ix = torch.multinomial(p, num_samples=1, replacement=True, generator=g).item()
            if ix == 0:
                break
            out.append(itos[ix])
        samples.append("".join(out))
    log_likelihood, n = 0.0, 0
    for w in words:
        chs = ["."] + list(w) + ["."]
        for ch1, ch2 in zip(chs, chs[1:]):
            log_likelihood += torch.log(P[stoi[ch1], stoi[ch2]])
            n += 1
    bigram_nll = -log_likelihood / n

    # --- MLP with a hand-written BatchNorm
    block_size, n_embd, n_hidden, vocab_size = 3, 6, 32, 27
    Xtr, Ytr = build_dataset(words, stoi, block_size)
    g = torch.Generator().manual_seed(2147483647 + seed)
    C = torch.randn((vocab_size, n_embd), generator=g)
    W1 = torch.randn((n_embd * block_size, n_hidden), generator=g) * (5 / 3) / (
        (n_embd * block_size) ** 0.5)
    b1 = torch.randn(n_hidden, generator=g) * 0.1
    W2 = torch.randn((n_hidden, vocab_size), generator=g) * 0.1
    b2 = torch.randn(vocab_size, generator=g) * 0.1
    bngain = torch.randn((1, n_hidden), generator=g) * 0.1 + 1.0
    bnbias = torch.randn((1, n_hidden), generator=g) * 0.1
    if initial_state is not None:
        C, W1, b1, W2, b2, bngain, bnbias = (initial_state[k].clone() for k in
                                             ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias"))
    parameters = [C, W1, b1, W2, b2, bngain, bnbias]
    initial = {k: v.clone() for k, v in zip(("C", "W1", "b1", "W2", "b2", "bngain", "bnbias"),
                                            parameters)}
    bnmean_running = torch.zeros((1, n_hidden))
    bnstd_running = torch.ones((1, n_hidden))
    for p in parameters:
        p.requires_grad = True

    def train_step(Xb, Yb, lr):
        emb = C[Xb]
        embcat = emb.view(emb.shape[0], -1)
        hpreact = embcat @ W1 + b1
        bnmeani = hpreact.mean(0, keepdim=True)
        bnstdi = hpreact.std(0, keepdim=True)
        hpreact = bngain * (hpreact - bnmeani) / bnstdi + bnbias
        with torch.no_grad():
            bnmean_running.mul_(0.95).add_(0.05 * bnmeani)
            bnstd_running.mul_(0.95).add_(0.05 * bnstdi)
        h = torch.tanh(hpreact)
        logits = h @ W2 + b2
        loss = F.cross_entropy(logits, Yb)
        for p in parameters:
            p.grad = None
        loss.backward()
        for p in parameters:
            p.data += -lr * p.grad
        return loss

    if compile:
        train_step = torch.compile(train_step)
    batch_size, losses = 32, []
    for i in range(30):
        ix = torch.randint(0, Xtr.shape[0], (batch_size,), generator=g)
        lr = 0.1 if i < 20 else 0.01
        losses.append(train_step(Xtr[ix], Ytr[ix], lr).item())

    # --- one step's backward by hand, against autograd's
    ix = torch.randint(0, Xtr.shape[0], (batch_size,), generator=g)
    Xb, Yb = Xtr[ix], Ytr[ix]
    n = batch_size
    emb = C[Xb]
    embcat = emb.view(emb.shape[0], -1)
    hprebn = embcat @ W1 + b1
    bnmeani = 1 / n * hprebn.sum(0, keepdim=True)
    bndiff = hprebn - bnmeani
    bndiff2 = bndiff ** 2
    bnvar = 1 / (n - 1) * bndiff2.sum(0, keepdim=True)
    bnvar_inv = (bnvar + 1e-5) ** -0.5
    bnraw = bndiff * bnvar_inv
    hpreact = bngain * bnraw + bnbias
    h = torch.tanh(hpreact)
    logits = h @ W2 + b2
    logit_maxes = logits.max(1, keepdim=True).values
    norm_logits = logits - logit_maxes
    counts = norm_logits.exp()
    counts_sum = counts.sum(1, keepdims=True)
    counts_sum_inv = counts_sum ** -1
    probs = counts * counts_sum_inv
    logprobs = probs.log()
    loss = -logprobs[range(n), Yb].mean()
    for p in parameters:
        p.grad = None
    for t in [logprobs, probs, counts, counts_sum, counts_sum_inv, norm_logits, logit_maxes,
              logits, h, hpreact, bnraw, bnvar_inv, bnvar, bndiff2, bndiff, hprebn, bnmeani,
              embcat, emb]:
        t.retain_grad()
    loss.backward()

    dlogprobs = torch.zeros_like(logprobs)
    dlogprobs[range(n), Yb] = -1.0 / n
    dprobs = (1.0 / probs) * dlogprobs
    dcounts_sum_inv = (counts * dprobs).sum(1, keepdim=True)
    dcounts = counts_sum_inv * dprobs
    dcounts_sum = (-counts_sum ** -2) * dcounts_sum_inv
    dcounts += torch.ones_like(counts) * dcounts_sum
    dnorm_logits = counts * dcounts
    dlogits = dnorm_logits.clone()
    dlogit_maxes = (-dnorm_logits).sum(1, keepdim=True)
    dlogits += F.one_hot(logits.max(1).indices, num_classes=logits.shape[1]) * dlogit_maxes
    dh = dlogits @ W2.T
    dW2 = h.T @ dlogits
    db2 = dlogits.sum(0)
    dhpreact = (1.0 - h ** 2) * dh
    dbngain = (bnraw * dhpreact).sum(0, keepdim=True)
    dbnraw = bngain * dhpreact
    dbnbias = dhpreact.sum(0, keepdim=True)
    dbndiff = bnvar_inv * dbnraw
    dbnvar_inv = (bndiff * dbnraw).sum(0, keepdim=True)
    dbnvar = (-0.5 * (bnvar + 1e-5) ** -1.5) * dbnvar_inv
    dbndiff2 = (1.0 / (n - 1)) * torch.ones_like(bndiff2) * dbnvar
    dbndiff += (2 * bndiff) * dbndiff2
    dhprebn = dbndiff.clone()
    dbnmeani = (-dbndiff).sum(0)
    dhprebn += 1.0 / n * (torch.ones_like(hprebn) * dbnmeani)
    dembcat = dhprebn @ W1.T
    dW1 = embcat.T @ dhprebn
    db1 = dhprebn.sum(0)
    demb = dembcat.view(emb.shape)
    dC = torch.zeros_like(C)
    for k in range(Xb.shape[0]):
        for j in range(Xb.shape[1]):
            dC[Xb[k, j]] += demb[k, j]
    checks = {name: cmp(name, d, t) for name, d, t in [
        ("logprobs", dlogprobs, logprobs), ("probs", dprobs, probs),
        ("counts_sum_inv", dcounts_sum_inv, counts_sum_inv), ("counts", dcounts, counts),
        ("logits", dlogits, logits), ("h", dh, h), ("W2", dW2, W2), ("b2", db2, b2),
        ("hpreact", dhpreact, hpreact), ("bngain", dbngain, bngain),
        ("bnvar", dbnvar, bnvar), ("hprebn", dhprebn, hprebn), ("W1", dW1, W1),
        ("emb", demb, emb), ("C", dC, C)]}
    # the fused softmax-cross-entropy gradient, as the notebook derives it
    dlogits_fast = F.softmax(logits, 1)
    dlogits_fast[range(n), Yb] -= 1
    dlogits_fast /= n

    with torch.no_grad():
        emb = C[Xtr]
        hpreact = emb.view(emb.shape[0], -1) @ W1 + b1
        hpreact = bngain * (hpreact - bnmean_running) / bnstd_running + bnbias
        val_loss = F.cross_entropy(torch.tanh(hpreact) @ W2 + b2, Ytr)

    values = {"bigram_counts": N, "counts_dtype": str(N.dtype).split(".")[-1],
              "bigram_nll": bigram_nll, "samples": ",".join(samples),
              "bnmean_running": bnmean_running, "bnstd_running": bnstd_running,
              "val_loss": val_loss, "W2": W2.detach().clone(),
              "approx_all": all(app for _, app, _ in checks.values()),
              "max_manual_diff": torch.tensor(max(d for _, _, d in checks.values())),
              "dlogits_fast_diff": (dlogits_fast - logits.grad).abs().max()}
    return {"losses": losses, "values": values, "initial_state": initial}
