"""Natural language inference in pytorch/examples' legacy/snli style: a `Bottle` mixin whose
forward folds (seq, batch) into one axis before nn.Linear's (`class Linear(Bottle, nn.Linear)`),
a shared bidirectional 2-layer LSTM encoder started from `new_zeros` states whose last two final
hidden states are concatenated, an MLP of the mixin Linears, premise and hypothesis encoded
alike, an argparse Namespace as config, batches as objects with .premise/.hypothesis/.label,
Adam, accuracy by torch.max, the whole model saved with torch.save (snapshots replaced through
glob) and the last snapshot reloaded for evaluation. The corpus is synthetic: the label (the
premise's last word mod 3) says whether the hypothesis repeats, mirrors or ignores the premise."""
import argparse
import glob
import os
import tempfile

import torch
import torch.nn as nn
import torch.optim as O


class Bottle(nn.Module):
    def forward(self, input):
        if len(input.size()) <= 2:
            return super(Bottle, self).forward(input)
        size = input.size()[:2]
        out = super(Bottle, self).forward(input.view(size[0] * size[1], -1))
        return out.view(size[0], size[1], -1)


class Linear(Bottle, nn.Linear):
    pass


class Encoder(nn.Module):
    def __init__(self, config):
        super(Encoder, self).__init__()
        self.config = config
        input_size = config.d_proj if config.projection else config.d_embed
        dropout = 0 if config.n_layers == 1 else config.dp_ratio
        self.rnn = nn.LSTM(input_size=input_size, hidden_size=config.d_hidden,
                           num_layers=config.n_layers, dropout=dropout,
                           bidirectional=config.birnn)

    def forward(self, inputs):
        batch_size = inputs.size()[1]
        state_shape = self.config.n_cells, batch_size, self.config.d_hidden
        h0 = c0 = inputs.new_zeros(state_shape)
        outputs, (ht, ct) = self.rnn(inputs, (h0, c0))
        if not self.config.birnn:
            return ht[-1]
        return ht[-2:].transpose(0, 1).contiguous().view(batch_size, -1)


class SNLIClassifier(nn.Module):
    def __init__(self, config):
        super(SNLIClassifier, self).__init__()
        self.config = config
        self.embed = nn.Embedding(config.n_embed, config.d_embed)
        self.projection = Linear(config.d_embed, config.d_proj)
        self.encoder = Encoder(config)
        self.dropout = nn.Dropout(p=config.dp_ratio)
        self.relu = nn.ReLU()
        seq_in_size = 2 * config.d_hidden * (2 if config.birnn else 1)
        self.out = nn.Sequential(
            Linear(seq_in_size, seq_in_size), self.relu, self.dropout,
            Linear(seq_in_size, seq_in_size), self.relu, self.dropout,
            Linear(seq_in_size, config.d_out))

    def forward(self, batch):
        prem_embed = self.embed(batch.premise)
        hypo_embed = self.embed(batch.hypothesis)
        if self.config.fix_emb:
            prem_embed, hypo_embed = prem_embed.detach(), hypo_embed.detach()
        if self.config.projection:
            prem_embed = self.relu(self.projection(prem_embed))
            hypo_embed = self.relu(self.projection(hypo_embed))
        premise = self.encoder(prem_embed)
        hypothesis = self.encoder(hypo_embed)
        return self.out(torch.cat([premise, hypothesis], 1))


class Batch:
    def __init__(self, premise, hypothesis, label):
        self.premise, self.hypothesis, self.label = premise, hypothesis, label
        self.batch_size = label.size(0)


def make_batches(n_batches, batch_size, seq_len, vocab, seed):
    """(seq, batch) token tensors; the premise's last word sets the label: entailment repeats
    the premise, contradiction mirrors its words, neutral draws new words."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        premise = torch.randint(1, vocab, (seq_len, batch_size), generator=g)
        label = premise[-1] % 3
        fresh = torch.randint(1, vocab, (seq_len, batch_size), generator=g)
        hypothesis = torch.where(label == 0, premise,
                                 torch.where(label == 1, vocab - premise, fresh))
        batches.append(Batch(premise, hypothesis, label))
    return batches


def get_args(argv):
    parser = argparse.ArgumentParser(description="PyTorch/torchtext SNLI example")
    parser.add_argument("--d_embed", type=int, default=16)
    parser.add_argument("--d_proj", type=int, default=16)
    parser.add_argument("--d_hidden", type=int, default=12)
    parser.add_argument("--n_layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--dp_ratio", type=float, default=0.2)
    parser.add_argument("--no-bidirectional", action="store_false", dest="birnn")
    parser.add_argument("--preserve-case", action="store_false", dest="lower")
    parser.add_argument("--no-projection", action="store_false", dest="projection")
    parser.add_argument("--train_embed", action="store_false", dest="fix_emb")
    parser.add_argument("--save_every", type=int, default=4)
    parser.add_argument("--dev_every", type=int, default=5)
    return parser.parse_args(argv)


def evaluate(model, criterion, batches):
    model.eval()
    n_correct, n_total = 0, 0
    with torch.no_grad():
        for batch in batches:
            answer = model(batch)
            n_correct += (torch.max(answer, 1)[1].view(batch.label.size())
                          == batch.label).sum().item()
            n_total += batch.batch_size
            dev_loss = criterion(answer, batch.label)
    return 100.0 * n_correct / n_total, dev_loss.item()


def main(seed=0, compile=False, initial_state=None, dropout=0.2, iterations=12):
    torch.manual_seed(seed)
    config = get_args(["--train_embed", "--dp_ratio", str(dropout)])
    config.n_embed, config.d_out = 20, 3
    config.n_cells = config.n_layers * (2 if config.birnn else 1)
    model = SNLIClassifier(config)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.CrossEntropyLoss()
    opt = O.Adam(model.parameters(), lr=config.lr)
    train = make_batches(iterations, 16, 4, config.n_embed, seed=5)
    dev = make_batches(2, 16, 4, config.n_embed, seed=6)

    def train_step(batch):
        model.train()
        opt.zero_grad()
        answer = model(batch)
        loss = criterion(answer, batch.label)
        loss.backward()
        opt.step()
        return answer, loss

    if compile:
        train_step = torch.compile(train_step)
    losses, dev_accs, n_correct, n_total = [], [], 0, 0
    with tempfile.TemporaryDirectory() as save_path:
        snapshot_prefix = os.path.join(save_path, "snapshot")
        for iteration, batch in enumerate(train, 1):
            answer, loss = train_step(batch)
            n_correct += (torch.max(answer, 1)[1].view(batch.label.size())
                          == batch.label).sum().item()
            n_total += batch.batch_size
            losses.append(loss.item())
            if iteration % config.save_every == 0:
                snapshot_path = f"{snapshot_prefix}_acc_{100. * n_correct / n_total:.4f}" \
                                f"_iter_{iteration}_model.pt"
                torch.save(model, snapshot_path)
                for f in glob.glob(snapshot_prefix + "*"):
                    if f != snapshot_path:
                        os.remove(f)
            if iteration % config.dev_every == 0:
                dev_accs.append(evaluate(model, criterion, dev))
        snapshots = glob.glob(snapshot_prefix + "*")
        restored = torch.load(snapshots[0], weights_only=False)
        restored_eval = evaluate(restored, criterion, dev)
    return {"losses": losses, "dev": dev_accs, "train_acc": 100. * n_correct / n_total,
            "snapshots": [os.path.basename(s) for s in snapshots],
            "restored_type": type(restored).__name__, "restored_eval": restored_eval,
            "initial_state": initial}
