"""Word language model with a Transformer encoder (pytorch/examples word_language_model,
TransformerModel): PositionalEncoding buffer, causal mask, Adam-free SGD as in main.py."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=5000):
        super(PositionalEncoding, self).__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        pe = pe.unsqueeze(0).transpose(0, 1)
        self.register_buffer('pe', pe)

    def forward(self, x):
        x = x + self.pe[:x.size(0), :]
        return self.dropout(x)


class TransformerModel(nn.Transformer):
    def __init__(self, ntoken, ninp, nhead, nhid, nlayers, dropout=0.5):
        super(TransformerModel, self).__init__(d_model=ninp, nhead=nhead,
                                               dim_feedforward=nhid,
                                               num_encoder_layers=nlayers)
        self.model_type = 'Transformer'
        self.src_mask = None
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.input_emb = nn.Embedding(ntoken, ninp)
        self.ninp = ninp
        self.decoder = nn.Linear(ninp, ntoken)
        self.init_weights()

    def _generate_square_subsequent_mask(self, sz):
        return torch.log(torch.tril(torch.ones(sz, sz)))

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.input_emb.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, src, has_mask=True):
        if has_mask:
            device = src.device
            if self.src_mask is None or self.src_mask.size(0) != len(src):
                mask = self._generate_square_subsequent_mask(len(src)).to(device)
                self.src_mask = mask
        else:
            self.src_mask = None
        src = self.input_emb(src) * math.sqrt(self.ninp)
        src = self.pos_encoder(src)
        output = self.encoder(src, mask=self.src_mask)
        output = self.decoder(output)
        return F.log_softmax(output, dim=-1)


def main(seed=0, compile=False, initial_state=None, dropout=0.2, epochs=2):
    torch.manual_seed(seed)
    ntokens, bptt, lr, clip = 20, 6, 0.5, 0.25
    rng = np.random.default_rng(0)
    tokens = [0]
    for _ in range(400):
        tokens.append((tokens[-1] * 3 + 1) % ntokens if rng.random() < 0.8
                      else int(rng.integers(ntokens)))
    corpus = torch.tensor(tokens, dtype=torch.long)
    nbatch = 320 // 8
    train_data = corpus[:nbatch * 8].view(8, -1).t().contiguous()
    model = TransformerModel(ntokens, 16, 2, 32, 2, dropout)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.NLLLoss()

    def train_step(data, targets):
        model.zero_grad()
        output = model(data)
        output = output.view(-1, ntokens)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(epochs):
        model.train()
        for batch, i in enumerate(range(0, train_data.size(0) - 1, bptt)):
            seq_len = min(bptt, len(train_data) - 1 - i)
            data = train_data[i:i + seq_len]
            targets = train_data[i + 1:i + 1 + seq_len].view(-1)
            losses.append(train_step(data, targets).item())
    return {"losses": losses, "initial_state": initial}


if __name__ == "__main__":
    print(main())
