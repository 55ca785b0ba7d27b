"""Sequence models tutorial: an nn.LSTM stepped one element at a time with an explicit
(h, c) tuple, then over the whole sequence at once; an LSTM part-of-speech tagger
(Embedding -> LSTM over len(sentence) x 1 x dim -> Linear -> log_softmax) trained with NLLLoss
and SGD, scored under no_grad before and after; and the character-level augmentation
exercise (a char LSTM's final hidden state concatenated to each word embedding)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

training_data = [
    ("The dog ate the apple".split(), ["DET", "NN", "V", "DET", "NN"]),
    ("Everybody read that book".split(), ["NN", "V", "DET", "NN"]),
    ("The cat read the dog book".split(), ["DET", "NN", "V", "DET", "NN", "NN"]),
]
tag_to_ix = {"DET": 0, "NN": 1, "V": 2}
EMBEDDING_DIM = 6
HIDDEN_DIM = 6


def prepare_sequence(seq, to_ix):
    idxs = [to_ix[w] for w in seq]
    return torch.tensor(idxs, dtype=torch.long)


class LSTMTagger(nn.Module):
    def __init__(self, embedding_dim, hidden_dim, vocab_size, tagset_size):
        super(LSTMTagger, self).__init__()
        self.hidden_dim = hidden_dim
        self.word_embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim)
        self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence):
        embeds = self.word_embeddings(sentence)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
        tag_scores = F.log_softmax(tag_space, dim=1)
        return tag_scores


class CharAugmentedTagger(nn.Module):
    def __init__(self, embedding_dim, char_dim, char_hidden, hidden_dim, vocab_size, n_chars,
                 tagset_size):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.char_embeddings = nn.Embedding(n_chars, char_dim)
        self.char_lstm = nn.LSTM(char_dim, char_hidden)
        self.lstm = nn.LSTM(embedding_dim + char_hidden, hidden_dim)
        self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence, words_chars):
        char_reprs = []
        for chars in words_chars:
            _, (h, _) = self.char_lstm(self.char_embeddings(chars).view(len(chars), 1, -1))
            char_reprs.append(h.view(1, -1))
        embeds = torch.cat([self.word_embeddings(sentence), torch.cat(char_reprs)], dim=1)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        return F.log_softmax(self.hidden2tag(lstm_out.view(len(sentence), -1)), dim=1)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = {}
    lstm = nn.LSTM(3, 3)
    word_to_ix = {}
    for sent, tags in training_data:
        for word in sent:
            if word not in word_to_ix:
                word_to_ix[word] = len(word_to_ix)
    chars = sorted({c for sent, _ in training_data for w in sent for c in w})
    char_to_ix = {c: i for i, c in enumerate(chars)}
    model = LSTMTagger(EMBEDDING_DIM, HIDDEN_DIM, len(word_to_ix), len(tag_to_ix))
    char_model = CharAugmentedTagger(EMBEDDING_DIM, 3, 3, HIDDEN_DIM, len(word_to_ix),
                                     len(chars), len(tag_to_ix))
    models = {"lstm": lstm, "tagger": model, "char": char_model}
    if initial_state is not None:
        for name, m in models.items():
            m.load_state_dict(initial_state[name])
    initial = {name: {k: v.clone() for k, v in m.state_dict().items()}
               for name, m in models.items()}

    # one element at a time, carrying the hidden state, then the whole sequence at once
    inputs = [torch.from_numpy(rng.normal(size=(1, 3)).astype(np.float32)) for _ in range(5)]
    hidden = (torch.from_numpy(rng.normal(size=(1, 1, 3)).astype(np.float32)),
              torch.from_numpy(rng.normal(size=(1, 1, 3)).astype(np.float32)))
    start = hidden
    for i in inputs:
        out, hidden = lstm(i.view(1, 1, -1), hidden)
    values["stepwise_out"] = out
    inputs = torch.cat(inputs).view(len(inputs), 1, -1)
    out, hidden = lstm(inputs, start)
    values["sequence_out"] = out
    values["sequence_hidden"] = hidden[0]

    loss_function = nn.NLLLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        values["scores_before"] = model(prepare_sequence(training_data[0][0], word_to_ix))

    def train_step(sentence_in, targets):
        model.zero_grad()
        tag_scores = model(sentence_in)
        loss = loss_function(tag_scores, targets)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(30):
        for sentence, tags in training_data:
            losses.append(train_step(prepare_sequence(sentence, word_to_ix),
                                     prepare_sequence(tags, tag_to_ix)).item())
    with torch.no_grad():
        tag_scores = model(prepare_sequence(training_data[0][0], word_to_ix))
    values["scores_after"] = tag_scores
    values["predicted"] = tag_scores.argmax(1)

    char_optimizer = optim.SGD(char_model.parameters(), lr=0.1)
    for epoch in range(5):
        for sentence, tags in training_data:
            char_model.zero_grad()
            words_chars = [prepare_sequence(w, char_to_ix) for w in sentence]
            scores = char_model(prepare_sequence(sentence, word_to_ix), words_chars)
            loss = loss_function(scores, prepare_sequence(tags, tag_to_ix))
            loss.backward()
            char_optimizer.step()
            losses.append(loss.item())
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
