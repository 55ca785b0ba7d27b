"""Translation with a sequence to sequence network and attention, in the style of the "NLP From
Scratch" tutorial: sentences become fixed-length LongTensor rows (EOS, then zero padding) in a
TensorDataset behind a RandomSampler DataLoader; an Embedding + batch_first GRU encoder; a
decoder with Bahdanau attention (Wa, Ua, Va Linear layers, scores softmaxed over the keys,
torch.bmm for the context) that feeds the target back in (teacher forcing,
target_tensor[:, i].unsqueeze(1)) or its own topk(1) guess, cat's its per-step outputs and
returns log_softmax; NLLLoss over .view(-1, n); one Adam optimizer per network; evaluate()
decodes greedily under torch.no_grad(). The "languages" are made up: the translation of a
sentence is its words, each replaced by its partner word, in the same order."""
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import optim
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SOS_token = 0
EOS_token = 1
MAX_LENGTH = 7


class Lang:
    def __init__(self, name):
        self.name = name
        self.word2index = {}
        self.word2count = {}
        self.index2word = {0: "SOS", 1: "EOS"}
        self.n_words = 2

    def addSentence(self, sentence):
        for word in sentence.split(" "):
            self.addWord(word)

    def addWord(self, word):
        if word not in self.word2index:
            self.word2index[word] = self.n_words
            self.word2count[word] = 1
            self.index2word[self.n_words] = word
            self.n_words += 1
        else:
            self.word2count[word] += 1


def make_pairs(rng, count):
    source = ["je", "tu", "il", "suis", "es", "est", "grand", "petit", "content", "ici"]
    target = ["i", "you", "he", "am", "are", "is", "tall", "small", "happy", "here"]
    partner = dict(zip(source, target))
    pairs = []
    for _ in range(count):
        words = [source[i] for i in rng.integers(0, len(source), rng.integers(2, MAX_LENGTH))]
        pairs.append([" ".join(words), " ".join(partner[w] for w in words)])
    return pairs


def prepareData(pairs):
    input_lang, output_lang = Lang("fra"), Lang("eng")
    for pair in pairs:
        input_lang.addSentence(pair[0])
        output_lang.addSentence(pair[1])
    return input_lang, output_lang


class EncoderRNN(nn.Module):
    def __init__(self, input_size, hidden_size, dropout_p=0.1):
        super(EncoderRNN, self).__init__()
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, input):
        embedded = self.dropout(self.embedding(input))
        output, hidden = self.gru(embedded)
        return output, hidden


class BahdanauAttention(nn.Module):
    def __init__(self, hidden_size):
        super(BahdanauAttention, self).__init__()
        self.Wa = nn.Linear(hidden_size, hidden_size)
        self.Ua = nn.Linear(hidden_size, hidden_size)
        self.Va = nn.Linear(hidden_size, 1)

    def forward(self, query, keys):
        scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(keys)))
        scores = scores.squeeze(2).unsqueeze(1)
        weights = F.softmax(scores, dim=-1)
        context = torch.bmm(weights, keys)
        return context, weights


class AttnDecoderRNN(nn.Module):
    def __init__(self, hidden_size, output_size, dropout_p=0.1):
        super(AttnDecoderRNN, self).__init__()
        self.embedding = nn.Embedding(output_size, hidden_size)
        self.attention = BahdanauAttention(hidden_size)
        self.gru = nn.GRU(2 * hidden_size, hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, output_size)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, encoder_outputs, encoder_hidden, target_tensor=None):
        batch_size = encoder_outputs.size(0)
        decoder_input = torch.empty(batch_size, 1, dtype=torch.long,
                                    device=device).fill_(SOS_token)
        decoder_hidden = encoder_hidden
        decoder_outputs = []
        attentions = []
        for i in range(MAX_LENGTH):
            decoder_output, decoder_hidden, attn_weights = self.forward_step(
                decoder_input, decoder_hidden, encoder_outputs)
            decoder_outputs.append(decoder_output)
            attentions.append(attn_weights)
            if target_tensor is not None:
                decoder_input = target_tensor[:, i].unsqueeze(1)   # teacher forcing
            else:
                _, topi = decoder_output.topk(1)
                decoder_input = topi.squeeze(-1).detach()
        decoder_outputs = torch.cat(decoder_outputs, dim=1)
        decoder_outputs = F.log_softmax(decoder_outputs, dim=-1)
        attentions = torch.cat(attentions, dim=1)
        return decoder_outputs, decoder_hidden, attentions

    def forward_step(self, input, hidden, encoder_outputs):
        embedded = self.dropout(self.embedding(input))
        query = hidden.permute(1, 0, 2)
        context, attn_weights = self.attention(query, encoder_outputs)
        input_gru = torch.cat((embedded, context), dim=2)
        output, hidden = self.gru(input_gru, hidden)
        output = self.out(output)
        return output, hidden, attn_weights


def indexesFromSentence(lang, sentence):
    return [lang.word2index[word] for word in sentence.split(" ")]


def tensorFromSentence(lang, sentence):
    indexes = indexesFromSentence(lang, sentence)
    indexes.append(EOS_token)
    return torch.tensor(indexes, dtype=torch.long, device=device).view(1, -1)


def get_dataloader(pairs, input_lang, output_lang, batch_size):
    n = len(pairs)
    input_ids = np.zeros((n, MAX_LENGTH), dtype=np.int32)
    target_ids = np.zeros((n, MAX_LENGTH), dtype=np.int32)
    for idx, (inp, tgt) in enumerate(pairs):
        inp_ids = indexesFromSentence(input_lang, inp)
        tgt_ids = indexesFromSentence(output_lang, tgt)
        inp_ids.append(EOS_token)
        tgt_ids.append(EOS_token)
        input_ids[idx, :len(inp_ids)] = inp_ids
        target_ids[idx, :len(tgt_ids)] = tgt_ids
    train_data = TensorDataset(torch.LongTensor(input_ids).to(device),
                               torch.LongTensor(target_ids).to(device))
    train_sampler = RandomSampler(train_data)
    return DataLoader(train_data, sampler=train_sampler, batch_size=batch_size)


def evaluate(encoder, decoder, sentence, input_lang, output_lang):
    with torch.no_grad():
        input_tensor = tensorFromSentence(input_lang, sentence)
        encoder_outputs, encoder_hidden = encoder(input_tensor)
        decoder_outputs, decoder_hidden, decoder_attn = decoder(encoder_outputs, encoder_hidden)
        _, topi = decoder_outputs.topk(1)
        decoded_ids = topi.squeeze()
        decoded_words = []
        for idx in decoded_ids:
            if idx.item() == EOS_token:
                decoded_words.append("<EOS>")
                break
            decoded_words.append(output_lang.index2word[idx.item()])
    return decoded_words, decoder_attn


def main(seed=0, compile=False, initial_state=None, dropout=0.1, n_epochs=8, n_pairs=24,
         batch_size=24, hidden_size=16):
    # With batch_size == n_pairs each epoch is one batch: the sampler's order then only
    # permutes the rows of that batch, and the mean loss does not depend on it.
    torch.manual_seed(seed)
    random.seed(seed)
    pairs = make_pairs(np.random.default_rng(0), n_pairs)
    input_lang, output_lang = prepareData(pairs)
    train_dataloader = get_dataloader(pairs, input_lang, output_lang, batch_size)
    encoder = EncoderRNN(input_lang.n_words, hidden_size, dropout).to(device)
    decoder = AttnDecoderRNN(hidden_size, output_lang.n_words, dropout).to(device)
    if initial_state is not None:
        encoder.load_state_dict(initial_state["encoder"])
        decoder.load_state_dict(initial_state["decoder"])
    initial = {"encoder": {k: v.clone() for k, v in encoder.state_dict().items()},
               "decoder": {k: v.clone() for k, v in decoder.state_dict().items()}}
    encoder_optimizer = optim.Adam(encoder.parameters(), lr=0.03)
    decoder_optimizer = optim.Adam(decoder.parameters(), lr=0.03)
    criterion = nn.NLLLoss()

    def train_step(input_tensor, target_tensor):
        encoder_optimizer.zero_grad()
        decoder_optimizer.zero_grad()
        encoder_outputs, encoder_hidden = encoder(input_tensor)
        decoder_outputs, _, _ = decoder(encoder_outputs, encoder_hidden, target_tensor)
        loss = criterion(decoder_outputs.view(-1, decoder_outputs.size(-1)),
                         target_tensor.view(-1))
        loss.backward()
        encoder_optimizer.step()
        decoder_optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    encoder.train()
    decoder.train()
    for epoch in range(1, n_epochs + 1):
        total_loss = 0
        for data in train_dataloader:
            input_tensor, target_tensor = data
            total_loss += train_step(input_tensor, target_tensor).item()
        losses.append(total_loss / len(train_dataloader))
    encoder.eval()
    decoder.eval()
    words, attentions = evaluate(encoder, decoder, pairs[0][0], input_lang, output_lang)
    return {"losses": losses, "words": words, "attentions": attentions.numpy().tolist(),
            "initial_state": initial}


if __name__ == "__main__":
    print(main())
