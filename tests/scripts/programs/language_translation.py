"""Machine translation with nn.Transformer in the style of pytorch/examples language_translation
(and the "Language Translation with nn.Transformer" tutorial): string pairs in a DataLoader whose
collate_fn tokenizes, numericalizes, adds <bos>/<eos> and pads with pad_sequence; a Translator
with a PositionalEncoding buffer, embeddings scaled by sqrt(d), xavier_uniform_ init and
encode()/decode() through transformer.encoder / transformer.decoder; causal masks from
generate_square_subsequent_mask, key padding masks for source, target and memory;
CrossEntropyLoss(ignore_index=<pad>), Adam(betas=(0.9, 0.98), eps=1e-9); train() and validate()
per epoch; the best model saved with torch.save and loaded back for inference; greedy_decode
with torch.ones(1, 1).fill_(start).type(torch.long), torch.max(prob, dim=1) and type_as. The
"languages" are made up: the translation of a sentence is its words, each replaced by its
partner word, in reverse order."""
import math
import os
import tempfile

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
special_symbols = {"<unk>": 0, "<pad>": 1, "<bos>": 2, "<eos>": 3}
SRC_WORDS = ["ein", "zwei", "hund", "katze", "rot", "blau", "sieht", "ist"]
TGT_WORDS = ["one", "two", "dog", "cat", "red", "blue", "sees", "is"]


def make_pairs(rng, count):
    partner = dict(zip(SRC_WORDS, TGT_WORDS))
    pairs = []
    for _ in range(count):
        words = [SRC_WORDS[i] for i in rng.integers(0, len(SRC_WORDS), rng.integers(2, 6))]
        pairs.append((" ".join(words) + "\n", " ".join(partner[w] for w in reversed(words))))
    return pairs


class Vocab:
    def __init__(self, words):
        self.itos = list(special_symbols) + sorted(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self):
        return len(self.itos)

    def __call__(self, tokens):
        return [self.stoi.get(t, special_symbols["<unk>"]) for t in tokens]

    def lookup_tokens(self, indices):
        return [self.itos[int(i)] for i in indices]


def tokenizer(text):
    return text.split()


def _seq_transform(*transforms):
    def func(txt_input):
        for transform in transforms:
            txt_input = transform(txt_input)
        return txt_input
    return func


def _tensor_transform(token_ids):
    return torch.cat((torch.tensor([special_symbols["<bos>"]]),
                      torch.tensor(token_ids),
                      torch.tensor([special_symbols["<eos>"]])))


src_vocab, tgt_vocab = Vocab(SRC_WORDS), Vocab(TGT_WORDS)
src_transform = _seq_transform(tokenizer, src_vocab, _tensor_transform)
tgt_transform = _seq_transform(tokenizer, tgt_vocab, _tensor_transform)


def collate_fn(batch):
    src_batch, tgt_batch = [], []
    for src_sample, tgt_sample in batch:
        src_batch.append(src_transform(src_sample.rstrip("\n")))
        tgt_batch.append(tgt_transform(tgt_sample.rstrip("\n")))
    src_batch = pad_sequence(src_batch, padding_value=special_symbols["<pad>"])
    tgt_batch = pad_sequence(tgt_batch, padding_value=special_symbols["<pad>"])
    return src_batch, tgt_batch


def generate_square_subsequent_mask(size, device):
    mask = (torch.triu(torch.ones((size, size), device=device)) == 1).transpose(0, 1)
    mask = mask.float().masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, float(0.0))
    return mask


def create_mask(src, tgt, pad_idx, device):
    src_seq_len = src.shape[0]
    tgt_seq_len = tgt.shape[0]
    tgt_mask = generate_square_subsequent_mask(tgt_seq_len, device)
    src_mask = torch.zeros((src_seq_len, src_seq_len), device=device).type(torch.bool)
    src_padding_mask = (src == pad_idx).transpose(0, 1)
    tgt_padding_mask = (tgt == pad_idx).transpose(0, 1)
    return src_mask, tgt_mask, src_padding_mask, tgt_padding_mask


class PositionalEncoding(nn.Module):
    def __init__(self, emb_size, dropout, maxlen=64):
        super(PositionalEncoding, self).__init__()
        den = torch.exp(- torch.arange(0, emb_size, 2) * math.log(10000) / emb_size)
        pos = torch.arange(0, maxlen).reshape(maxlen, 1)
        pos_embedding = torch.zeros((maxlen, emb_size))
        pos_embedding[:, 0::2] = torch.sin(pos * den)
        pos_embedding[:, 1::2] = torch.cos(pos * den)
        pos_embedding = pos_embedding.unsqueeze(-2)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pos_embedding", pos_embedding)

    def forward(self, token_embedding):
        return self.dropout(token_embedding + self.pos_embedding[:token_embedding.size(0), :])


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size, emb_size):
        super(TokenEmbedding, self).__init__()
        self.embedding = nn.Embedding(vocab_size, emb_size)
        self.emb_size = emb_size

    def forward(self, tokens):
        return self.embedding(tokens.long()) * math.sqrt(self.emb_size)


class Translator(nn.Module):
    def __init__(self, num_encoder_layers, num_decoder_layers, embed_size, num_heads,
                 src_vocab_size, tgt_vocab_size, dim_feedforward, dropout):
        super(Translator, self).__init__()
        self.src_embedding = TokenEmbedding(src_vocab_size, embed_size)
        self.tgt_embedding = TokenEmbedding(tgt_vocab_size, embed_size)
        self.pos_enc = PositionalEncoding(embed_size, dropout)
        self.transformer = nn.Transformer(d_model=embed_size, nhead=num_heads,
                                          num_encoder_layers=num_encoder_layers,
                                          num_decoder_layers=num_decoder_layers,
                                          dim_feedforward=dim_feedforward, dropout=dropout)
        self.ff = nn.Linear(embed_size, tgt_vocab_size)
        self._init_weights()

    def _init_weights(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, trg, src_mask, tgt_mask, src_padding_mask, tgt_padding_mask,
                memory_key_padding_mask):
        src_emb = self.pos_enc(self.src_embedding(src))
        tgt_emb = self.pos_enc(self.tgt_embedding(trg))
        outs = self.transformer(src_emb, tgt_emb, src_mask, tgt_mask, None, src_padding_mask,
                                tgt_padding_mask, memory_key_padding_mask)
        return self.ff(outs)

    def encode(self, src, src_mask):
        return self.transformer.encoder(self.pos_enc(self.src_embedding(src)), src_mask)

    def decode(self, tgt, memory, tgt_mask):
        return self.transformer.decoder(self.pos_enc(self.tgt_embedding(tgt)), memory, tgt_mask)


def greedy_decode(model, src, src_mask, max_len, start_symbol, end_symbol):
    src = src.to(DEVICE)
    src_mask = src_mask.to(DEVICE)
    memory = model.encode(src, src_mask)
    ys = torch.ones(1, 1).fill_(start_symbol).type(torch.long).to(DEVICE)
    for _ in range(max_len - 1):
        memory = memory.to(DEVICE)
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(ys.size(0)).type(torch.bool)
        out = model.decode(ys, memory, tgt_mask.to(DEVICE))
        out = out.transpose(0, 1)
        prob = model.ff(out[:, -1])
        _, next_word = torch.max(prob, dim=1)
        next_word = next_word.item()
        ys = torch.cat([ys, torch.ones(1, 1).type_as(src.data).fill_(next_word)], dim=0)
        if next_word == end_symbol:
            break
    return ys


def translate(model, sentence):
    model.eval()
    src = src_transform(sentence).view(-1, 1)
    num_tokens = src.shape[0]
    src_mask = (torch.zeros(num_tokens, num_tokens)).type(torch.bool)
    with torch.no_grad():
        tgt_tokens = greedy_decode(model, src, src_mask, max_len=num_tokens + 5,
                                   start_symbol=special_symbols["<bos>"],
                                   end_symbol=special_symbols["<eos>"]).flatten()
    output_as_list = list(tgt_tokens.cpu().numpy())
    words = " ".join(tgt_vocab.lookup_tokens(output_as_list))
    return words.replace("<bos>", "").replace("<eos>", "").strip()


def validate(model, valid_dl, loss_fn):
    losses = 0
    model.eval()
    for src, tgt in valid_dl:
        src, tgt = src.to(DEVICE), tgt.to(DEVICE)
        tgt_input = tgt[:-1, :]
        src_mask, tgt_mask, src_padding_mask, tgt_padding_mask = create_mask(
            src, tgt_input, special_symbols["<pad>"], DEVICE)
        logits = model(src, tgt_input, src_mask, tgt_mask, src_padding_mask, tgt_padding_mask,
                       src_padding_mask)
        tgt_out = tgt[1:, :]
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
        losses += loss.item()
    return losses / len(list(valid_dl))


def main(seed=0, compile=False, initial_state=None, dropout=0.0, epochs=3, batch=8):
    torch.manual_seed(seed)
    rng = np.random.default_rng(0)
    train_dl = DataLoader(make_pairs(rng, 40), batch_size=batch, collate_fn=collate_fn)
    valid_dl = DataLoader(make_pairs(rng, 16), batch_size=batch, collate_fn=collate_fn)
    model = Translator(num_encoder_layers=1, num_decoder_layers=1, embed_size=16, num_heads=2,
                       src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab),
                       dim_feedforward=32, dropout=dropout).to(DEVICE)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=special_symbols["<pad>"])
    optim = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.98), eps=1e-9)

    def train_step(src, tgt):
        tgt_input = tgt[:-1, :]
        src_mask, tgt_mask, src_padding_mask, tgt_padding_mask = create_mask(
            src, tgt_input, special_symbols["<pad>"], DEVICE)
        logits = model(src, tgt_input, src_mask, tgt_mask, src_padding_mask, tgt_padding_mask,
                       src_padding_mask)
        optim.zero_grad()
        tgt_out = tgt[1:, :]
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
        loss.backward()
        optim.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, train_losses, val_losses = [], [], []
    best_val_loss = 1e6
    with tempfile.TemporaryDirectory() as logging_dir:
        for epoch in range(1, epochs + 1):
            model.train()
            epoch_loss = 0
            for src, tgt in train_dl:
                loss = train_step(src.to(DEVICE), tgt.to(DEVICE)).item()
                losses.append(loss)
                epoch_loss += loss
            train_losses.append(epoch_loss / len(list(train_dl)))
            val_loss = validate(model, valid_dl, loss_fn)
            val_losses.append(val_loss)
            if val_loss < best_val_loss:
                best_val_loss = val_loss
                torch.save(model.state_dict(), os.path.join(logging_dir, "best.pt"))
        model.load_state_dict(torch.load(os.path.join(logging_dir, "best.pt")))
    translation = translate(model, make_pairs(np.random.default_rng(5), 1)[0][0])
    return {"losses": losses, "train_losses": train_losses, "val_losses": val_losses,
            "translation": translation, "initial_state": initial}


if __name__ == "__main__":
    print(main())
