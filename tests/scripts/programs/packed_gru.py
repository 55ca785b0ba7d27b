"""Variable-length sequence classification as the PyTorch RNN tutorials and Stack Overflow
answers on packing write it: token-id sequences of different lengths padded by
`nn.utils.rnn.pad_sequence(batch_first=True)` in a DataLoader `collate_fn`, embedded with a
`padding_idx`, packed by `pack_padded_sequence(lengths, batch_first=True,
enforce_sorted=False)`, run through a bidirectional 2-layer `nn.GRU` with dropout between the
layers, unpacked by `pad_packed_sequence`, pooled by a masked mean over the real steps (and the
last layer's final hidden states of both directions, concatenated), a linear head; gradient
clipping by `clip_grad_norm_`, `StepLR`, and accuracy. The training step is the compiled
function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
from torch.utils.data import DataLoader, Dataset

VOCAB, PAD = 12, 0


class SequenceDataset(Dataset):
    """Sequences of ids 1..VOCAB-1; the label is whether id 3 appears more often than id 7."""

    def __init__(self, rng, n):
        self.items = []
        for _ in range(n):
            length = int(rng.integers(3, 15))
            seq = rng.integers(1, VOCAB, length)
            label = int((seq == 3).sum() > (seq == 7).sum())
            self.items.append((torch.from_numpy(seq.astype(np.int64)), label))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(batch):
    seqs, labels = zip(*batch)
    lengths = torch.tensor([len(s) for s in seqs])
    padded = pad_sequence(seqs, batch_first=True, padding_value=PAD)
    # every batch padded to one length, so the compiled step sees one shape
    padded = F.pad(padded, (0, 14 - padded.shape[1]), value=PAD)
    return padded, lengths, torch.tensor(labels)


class GRUClassifier(nn.Module):
    def __init__(self, embed_dim=16, hidden=24, num_layers=2, num_classes=2, dropout=0.2):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, embed_dim, padding_idx=PAD)
        self.gru = nn.GRU(embed_dim, hidden, num_layers=num_layers, batch_first=True,
                          bidirectional=True, dropout=dropout)
        self.fc = nn.Linear(4 * hidden, num_classes)

    def forward(self, x, lengths):
        emb = self.embedding(x)
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        packed_out, h_n = self.gru(packed)
        out, out_lengths = pad_packed_sequence(packed_out, batch_first=True,
                                               total_length=x.shape[1])
        mask = (torch.arange(out.shape[1])[None, :] < out_lengths[:, None]).unsqueeze(-1)
        mean = (out * mask).sum(dim=1) / out_lengths[:, None].to(out.dtype)
        last = torch.cat([h_n[-2], h_n[-1]], dim=1)       # the last layer, both directions
        return self.fc(torch.cat([mean, last], dim=1))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(6)
    train_set, test_set = SequenceDataset(rng, 96), SequenceDataset(rng, 32)
    loader = DataLoader(train_set, batch_size=16, shuffle=True, collate_fn=collate)
    model = GRUClassifier()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    def train_step(x, lengths, y):
        optimizer.zero_grad()
        logits = model(x, lengths)
        loss = criterion(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        return loss, (logits.argmax(1) == y).sum()

    if compile:
        train_step = torch.compile(train_step)
    losses, accuracies, lrs = [], [], []
    for epoch in range(3):
        model.train()
        correct = 0
        for x, lengths, y in loader:
            loss, right = train_step(x, lengths, y)
            losses.append(loss.item())
            correct += right.item()
        accuracies.append(correct / len(train_set))
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])

    model.eval()
    with torch.no_grad():
        x, lengths, y = collate([test_set[i] for i in range(len(test_set))])
        logits = model(x, lengths)
        test_acc = (logits.argmax(1) == y).float().mean().item()
        # padding changes nothing: one sequence alone, unpadded, gives its batched logits
        alone = model(test_set[0][0][None, :], torch.tensor([len(test_set[0][0])]))
    values = {"logits": logits[:8], "alone": alone, "alone_matches": bool(
              torch.allclose(alone[0], logits[0], atol=1e-5)), "test_acc": test_acc,
              "accuracies": torch.tensor(accuracies), "lrs": torch.tensor(lrs),
              "emb_pad_row": model.embedding.weight[PAD].detach().clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
