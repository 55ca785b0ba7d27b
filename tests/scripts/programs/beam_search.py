"""A GRU encoder-decoder as the seq2seq tutorials (bentrevett's pytorch-seq2seq, the PyTorch
translation tutorial) write it, trained with teacher forcing on a toy transduction task
(reverse a digit string and add one to each digit), then decoded greedily and by beam search as
the hand-written beam searches do: `log_softmax` scores accumulated per beam, `topk` over the
flattened beam * vocabulary scores, `//` and `%` to recover the beam and the token,
`index_select` to reorder the hidden states, finished beams kept by `masked_fill` (only EOS may
follow EOS, at no cost) and a length penalty ((5 + len) / 6) ** alpha at the end. The training
step (`nn.Embedding`, `nn.GRU`, cross-entropy with `ignore_index` for the padding) is the
compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, SOS, EOS = 0, 1, 2
N_DIGITS = 8
VOCAB = 3 + N_DIGITS              # pad, sos, eos, then the digits


class Encoder(nn.Module):
    def __init__(self, vocab, emb_dim, hid_dim):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb_dim, padding_idx=PAD)
        self.rnn = nn.GRU(emb_dim, hid_dim, batch_first=True)

    def forward(self, src):
        embedded = self.embedding(src)
        outputs, hidden = self.rnn(embedded)
        return hidden


class Decoder(nn.Module):
    def __init__(self, vocab, emb_dim, hid_dim):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb_dim, padding_idx=PAD)
        self.rnn = nn.GRU(emb_dim + hid_dim, hid_dim, batch_first=True)
        self.fc_out = nn.Linear(emb_dim + 2 * hid_dim, vocab)

    def forward(self, token, hidden, context):
        # token: [batch], hidden and context: [1, batch, hid]
        embedded = self.embedding(token.unsqueeze(1))                  # [batch, 1, emb]
        emb_con = torch.cat((embedded, context.permute(1, 0, 2)), dim=2)
        output, hidden = self.rnn(emb_con, hidden)
        output = torch.cat((embedded.squeeze(1), hidden.squeeze(0), context.squeeze(0)), dim=1)
        return self.fc_out(output), hidden


class Seq2Seq(nn.Module):
    def __init__(self, emb_dim=16, hid_dim=32):
        super().__init__()
        self.encoder = Encoder(VOCAB, emb_dim, hid_dim)
        self.decoder = Decoder(VOCAB, emb_dim, hid_dim)

    def forward(self, src, trg):
        """Teacher forcing all the way: the decoder reads the gold previous token."""
        context = self.encoder(src)
        hidden = context
        outputs = []
        for t in range(trg.shape[1] - 1):
            logits, hidden = self.decoder(trg[:, t], hidden, context)
            outputs.append(logits)
        return torch.stack(outputs, dim=1)                        # [batch, trg_len - 1, vocab]


def make_pairs(rng, n, max_len=5):
    """Digit strings of random length; the target reverses them and adds one mod N_DIGITS."""
    src = np.full((n, max_len), PAD, np.int64)
    trg = np.full((n, max_len + 2), PAD, np.int64)
    for i in range(n):
        length = int(rng.integers(2, max_len + 1))
        digits = rng.integers(0, N_DIGITS, length)
        src[i, :length] = digits + 3
        out = (digits[::-1] + 1) % N_DIGITS + 3
        trg[i, 0], trg[i, 1:length + 1], trg[i, length + 1] = SOS, out, EOS
    return torch.from_numpy(src), torch.from_numpy(trg)


def greedy_decode(model, src, max_len=7):
    context = model.encoder(src)
    hidden = context
    token = torch.full((src.shape[0],), SOS, dtype=torch.long)
    tokens = []
    for _ in range(max_len):
        logits, hidden = model.decoder(token, hidden, context)
        token = logits.argmax(1)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def beam_search(model, src, beam_size=3, max_len=7, alpha=0.7):
    """One source sentence ([1, src_len]): the best hypothesis, every beam's length-normalized
    score and its raw log-probability."""
    context = model.encoder(src)                                   # [1, 1, hid]
    context = context.repeat(1, beam_size, 1)
    hidden = context
    tokens = torch.full((beam_size, 1), SOS, dtype=torch.long)
    scores = torch.zeros(beam_size)
    scores[1:] = float("-inf")                 # all beams start equal: keep only the first
    finished = torch.zeros(beam_size, dtype=torch.bool)
    lengths = torch.zeros(beam_size)
    for step in range(max_len):
        logits, hidden = model.decoder(tokens[:, -1], hidden, context)
        log_probs = F.log_softmax(logits, dim=-1)                  # [beam, vocab]
        # a finished beam only extends by EOS, at no cost
        log_probs = log_probs.masked_fill(finished.unsqueeze(1), float("-inf"))
        log_probs[:, EOS] = log_probs[:, EOS].masked_fill(finished, 0.0)
        candidates = scores.unsqueeze(1) + log_probs                # [beam, vocab]
        top_scores, top_ids = candidates.view(-1).topk(beam_size)
        beam_ids = top_ids // VOCAB
        token_ids = top_ids % VOCAB
        tokens = torch.cat([tokens.index_select(0, beam_ids), token_ids.unsqueeze(1)], dim=1)
        hidden = hidden.index_select(1, beam_ids)
        was_finished = finished.index_select(0, beam_ids)
        lengths = lengths.index_select(0, beam_ids) + (~was_finished).float()
        finished = was_finished | (token_ids == EOS)
        scores = top_scores
        if bool(finished.all()):
            break
    penalty = ((5.0 + lengths) / 6.0) ** alpha
    normalized = (scores / penalty).masked_fill(~finished, float("-inf"))
    if bool(torch.isinf(normalized).all()):
        normalized = scores / penalty                              # nothing finished in time
    best = normalized.argmax()
    return tokens[best, 1:], normalized, scores


def strip(seq):
    out = []
    for t in seq.tolist():
        if t == EOS:
            break
        out.append(t)
    return out


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(21)
    src_train, trg_train = make_pairs(rng, 96)
    src_test, trg_test = make_pairs(rng, 8)
    model = Seq2Seq()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss(ignore_index=PAD)

    def train_step(src, trg):
        optimizer.zero_grad()
        output = model(src, trg)
        output_dim = output.shape[-1]
        loss = criterion(output.reshape(-1, output_dim), trg[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(15):
        model.train()
        for i in range(0, len(src_train), 32):
            losses.append(train_step(src_train[i:i + 32], trg_train[i:i + 32]).item())

    model.eval()
    with torch.no_grad():
        greedy = greedy_decode(model, src_test)
        beams, beam_scores, raw_scores = [], [], []
        for i in range(len(src_test)):
            best, normalized, raw = beam_search(model, src_test[i:i + 1])
            beams.append(" ".join(str(t) for t in strip(best)))
            beam_scores.append(normalized)
            raw_scores.append(raw)
    gold = [" ".join(str(t) for t in strip(trg_test[i, 1:])) for i in range(len(trg_test))]
    values = {"greedy": greedy, "beams": " | ".join(beams), "gold": " | ".join(gold),
              "beam_scores": torch.stack(beam_scores), "raw_scores": torch.stack(raw_scores),
              "beam_exact": sum(b == g for b, g in zip(beams, gold)),
              "greedy_exact": sum(" ".join(str(t) for t in strip(greedy[i])) == gold[i]
                                  for i in range(len(gold)))}
    return {"losses": losses, "values": values, "initial_state": initial}
