"""A small speech recognizer trained with CTC as DeepSpeech-style tutorials write it: synthetic
"spectrograms" of variable length padded into a batch (each token a frequency band held for a
few frames, plus noise), a Conv1d front end with stride 2 (no bias before its BatchNorm; the
output lengths worked out from the input lengths), a bidirectional GRU over the padded frames
(as the AssemblyAI / DeepSpeech2 tutorials run it, unpacked), a linear classifier,
`F.log_softmax(..., dim=2)` over time-major outputs, `nn.CTCLoss(blank=0, zero_infinity=True)`
with input and target lengths (targets padded by `pad_sequence`, as the tutorial does), AdamW with
`clip_grad_norm_` and a OneCycle schedule, and greedy decoding (argmax, collapse repeats, drop
blanks) scored by edit distance. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

N_FEATS, N_CLASSES = 16, 6            # class 0 is the blank


def synth_batch(rng, batch):
    """Token sequences and their spectrograms, padded to the longest."""
    targets, specs = [], []
    for _ in range(batch):
        tokens = rng.integers(1, N_CLASSES, rng.integers(2, 5)).astype(np.int64)
        frames = []
        for tok in tokens:
            length = rng.integers(4, 7)
            frame = np.zeros((length, N_FEATS), np.float32)
            frame[:, 3 * (tok - 1):3 * (tok - 1) + 3] = 1.0
            frames.append(frame)
            frames.append(np.zeros((2, N_FEATS), np.float32))
        spec = np.concatenate(frames) + 0.1 * rng.standard_normal((sum(map(len, frames)),
                                                                    N_FEATS)).astype(np.float32)
        specs.append(spec)
        targets.append(tokens)
    lengths = [len(s) for s in specs]
    x = np.zeros((batch, N_FEATS, 32), np.float32)          # (4 tokens of 6 + 2 frames fit)
    for i, s in enumerate(specs):
        x[i, :, :len(s)] = s.T
    return (torch.from_numpy(x), torch.tensor(lengths),
            pad_sequence([torch.from_numpy(t) for t in targets], batch_first=True),
            torch.tensor([len(t) for t in targets]), targets)


class SpeechModel(nn.Module):
    def __init__(self, hidden=24):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv1d(N_FEATS, 32, kernel_size=5, stride=2, padding=2,
                                           bias=False),
                                 nn.BatchNorm1d(32), nn.GELU())
        self.rnn = nn.GRU(32, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.classifier = nn.Sequential(nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden,
                                                                            N_CLASSES))

    @staticmethod
    def output_lengths(lengths):
        return (lengths + 2 * 2 - 5) // 2 + 1

    def forward(self, x, lengths):
        x = self.cnn(x).transpose(1, 2)                        # (batch, time, channels)
        out, _ = self.rnn(x)
        return self.classifier(out), self.output_lengths(lengths)


def greedy_decode(log_probs, lengths):
    best = log_probs.argmax(dim=2).transpose(0, 1)             # (batch, time)
    decoded = []
    for seq, n in zip(best, lengths):
        seq = torch.unique_consecutive(seq[:n])
        decoded.append([int(c) for c in seq if c != 0])
    return decoded


def edit_distance(a, b):
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(6)
    batches = [synth_batch(rng, 6) for _ in range(4)]
    model = SpeechModel()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.CTCLoss(blank=0, zero_infinity=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    epochs = 3
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2,
                                                    steps_per_epoch=len(batches), epochs=epochs,
                                                    anneal_strategy="linear")

    def train_step(x, lengths, targets, target_lengths):
        optimizer.zero_grad()
        output, out_lengths = model(x, lengths)
        log_probs = F.log_softmax(output, dim=2).transpose(0, 1)     # (time, batch, classes)
        loss = criterion(log_probs, targets, out_lengths, target_lengths)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    model.train()
    for epoch in range(epochs):
        for x, lengths, targets, target_lengths, _ in batches:
            losses.append(train_step(x, lengths, targets, target_lengths).item())

    model.eval()
    x, lengths, targets, target_lengths, token_lists = synth_batch(rng, 6)
    with torch.no_grad():
        output, out_lengths = model(x, lengths)
        log_probs = F.log_softmax(output, dim=2).transpose(0, 1)
        eval_loss = F.ctc_loss(log_probs, targets, out_lengths, target_lengths, reduction="sum")
    decoded = greedy_decode(log_probs, out_lengths)
    errors = sum(edit_distance(d, list(t)) for d, t in zip(decoded, token_lists))
    values = {"eval_loss": eval_loss, "decoded": str(decoded), "errors": errors,
              "lr": torch.tensor(scheduler.get_last_lr()),
              "log_probs": log_probs[:, 0]}
    return {"losses": losses, "values": values, "initial_state": initial}
