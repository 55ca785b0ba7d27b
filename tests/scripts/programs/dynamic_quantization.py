"""The dynamic quantization tutorial (an LSTM word language model) at small sizes: the model is
trained briefly on a synthetic corpus (the tutorial loads pretrained weights), generates words
by sampling, then torch.quantization.quantize_dynamic swaps its LSTM and Linear layers for
int8-weight ones; the quantized model's printout, its saved size and its evaluation loss are
compared with the float model's."""
import io
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.quantization


class LSTMModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder."""

    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.5):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.init_weights()
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self):
        initrange = 0.1
        self.encoder.weight.data.uniform_(-initrange, initrange)
        self.decoder.bias.data.zero_()
        self.decoder.weight.data.uniform_(-initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        return decoded, hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid))


class Dictionary:
    def __init__(self):
        self.word2idx = {}
        self.idx2word = []

    def add_word(self, word):
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]

    def __len__(self):
        return len(self.idx2word)


def synthetic_lines(rng, n_lines, vocab):
    """Sentences from a small Markov chain over `vocab`, so the model has something to learn."""
    nexts = {w: rng.choice(vocab, size=3, replace=False) for w in vocab}
    lines = []
    for _ in range(n_lines):
        word = rng.choice(vocab)
        words = [word]
        for _ in range(rng.integers(4, 9)):
            word = rng.choice(nexts[word])
            words.append(word)
        lines.append(" ".join(words))
    return lines


def tokenize(dictionary, lines):
    idss = []
    for line in lines:
        words = line.split() + ["<eos>"]
        ids = [dictionary.add_word(word) for word in words]
        idss.append(torch.tensor(ids).type(torch.int64))
    return torch.cat(idss)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz)
    return data.view(bsz, -1).t().contiguous()


bptt = 10


def get_batch(source, i):
    seq_len = min(bptt, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].view(-1)
    return data, target


def repackage_hidden(h):
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(30)]
    dictionary = Dictionary()
    train = tokenize(dictionary, synthetic_lines(rng, 60, vocab))
    test = tokenize(dictionary, synthetic_lines(rng, 12, vocab))
    ntokens = len(dictionary)
    criterion = nn.CrossEntropyLoss()

    model = LSTMModel(ntoken=ntokens, ninp=16, nhid=24, nlayers=2, dropout=0.0)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    # a short training in place of the tutorial's pretrained weights
    train_data = batchify(train, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def train_step(data, targets, hidden):
        opt.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(output.view(-1, ntokens), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        return loss, hidden

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    model.train()
    for epoch in range(2):
        hidden = model.init_hidden(4)
        for i in range(0, (train_data.size(0) - 1) // bptt * bptt, bptt):
            data, targets = get_batch(train_data, i)
            hidden = repackage_hidden(hidden)
            loss, hidden = train_step(data, targets, hidden)
            losses.append(loss.item())

    model.eval()
    values = {"model_repr": str(model)}
    input_ = torch.randint(ntokens, (1, 1), dtype=torch.long)
    hidden = model.init_hidden(1)
    words = []
    with torch.no_grad():
        for i in range(20):
            output, hidden = model(input_, hidden)
            word_weights = output.squeeze().div(1.0).exp().cpu()
            word_idx = torch.multinomial(word_weights, 1)[0]
            input_.fill_(word_idx)
            words.append(dictionary.idx2word[word_idx])
    values["generated"] = " ".join(words)

    eval_batch_size = 1
    test_data = batchify(test, eval_batch_size)

    def evaluate(model_, data_source):
        model_.eval()
        total_loss = 0.
        hidden = model_.init_hidden(eval_batch_size)
        with torch.no_grad():
            for i in range(0, data_source.size(0) - 1, bptt):
                data, targets = get_batch(data_source, i)
                output, hidden = model_(data, hidden)
                hidden = repackage_hidden(hidden)
                output_flat = output.view(-1, ntokens)
                total_loss += len(data) * criterion(output_flat, targets).item()
        return total_loss / (len(data_source) - 1)

    quantized_model = torch.quantization.quantize_dynamic(
        model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    values["quantized_repr"] = str(quantized_model)

    def size_of_model(model):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "temp.p")
            torch.save(model.state_dict(), path)
            return os.path.getsize(path)

    values["size_ratio"] = size_of_model(quantized_model) / size_of_model(model)
    values["float_loss"] = evaluate(model, test_data)
    values["quantized_loss"] = evaluate(quantized_model, test_data)
    data, _ = get_batch(test_data, 0)
    with torch.no_grad():
        values["quantized_logits"] = quantized_model(data, quantized_model.init_hidden(1))[0]
        values["float_logits"] = model(data, model.init_hidden(1))[0]
    return {"losses": losses, "values": values, "initial_state": initial}
