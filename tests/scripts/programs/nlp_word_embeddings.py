"""Beginner NLP tutorials: a bag-of-words classifier (make_bow_vector, Linear + log_softmax,
NLLLoss, SGD), an N-gram language model over word embeddings (nn.Embedding, view((1, -1)),
total_loss bookkeeping, looking an embedding up by word) and a CBOW model, on a short text."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

CONTEXT_SIZE = 2
EMBEDDING_DIM = 8

test_sentence = """When forty winters shall besiege thy brow,
And dig deep trenches in thy beauty's field,
Thy youth's proud livery so gazed on now,
Will be a totter'd weed of small worth held:
Then being asked, where all thy beauty lies,
Where all the treasure of thy lusty days;""".split()

bow_data = [("me gusta comer en la cafeteria".split(), "SPANISH"),
            ("Give it to me".split(), "ENGLISH"),
            ("No creo que sea una buena idea".split(), "SPANISH"),
            ("No it is not a good idea to get lost at sea".split(), "ENGLISH")]
bow_test = [("Yo creo que si".split(), "SPANISH"),
            ("it is lost on me".split(), "ENGLISH")]
label_to_ix = {"SPANISH": 0, "ENGLISH": 1}


class BoWClassifier(nn.Module):
    def __init__(self, num_labels, vocab_size):
        super(BoWClassifier, self).__init__()
        self.linear = nn.Linear(vocab_size, num_labels)

    def forward(self, bow_vec):
        return F.log_softmax(self.linear(bow_vec), dim=1)


def make_bow_vector(sentence, word_to_ix):
    vec = torch.zeros(len(word_to_ix))
    for word in sentence:
        vec[word_to_ix[word]] += 1
    return vec.view(1, -1)


def make_target(label, label_to_ix):
    return torch.LongTensor([label_to_ix[label]])


class NGramLanguageModeler(nn.Module):
    def __init__(self, vocab_size, embedding_dim, context_size):
        super(NGramLanguageModeler, self).__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.linear1 = nn.Linear(context_size * embedding_dim, 32)
        self.linear2 = nn.Linear(32, vocab_size)

    def forward(self, inputs):
        embeds = self.embeddings(inputs).view((1, -1))
        out = F.relu(self.linear1(embeds))
        out = self.linear2(out)
        log_probs = F.log_softmax(out, dim=1)
        return log_probs


class CBOW(nn.Module):
    def __init__(self, vocab_size, embedding_dim):
        super(CBOW, self).__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.linear = nn.Linear(embedding_dim, vocab_size)

    def forward(self, inputs):
        embeds = self.embeddings(inputs).sum(dim=0, keepdim=True)
        return F.log_softmax(self.linear(embeds), dim=1)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    values = {}
    # bag of words
    word_to_ix = {}
    for sent, _ in bow_data + bow_test:
        for word in sent:
            if word not in word_to_ix:
                word_to_ix[word] = len(word_to_ix)
    bow = BoWClassifier(2, len(word_to_ix))
    ngram_words = set(test_sentence)
    vocab_ix = {word: i for i, word in enumerate(sorted(ngram_words))}
    ngram_model = NGramLanguageModeler(len(vocab_ix), EMBEDDING_DIM, CONTEXT_SIZE)
    cbow = CBOW(len(vocab_ix), EMBEDDING_DIM)
    models = {"bow": bow, "ngram": ngram_model, "cbow": cbow}
    if initial_state is not None:
        for name, model in models.items():
            model.load_state_dict(initial_state[name])
    initial = {name: {k: v.clone() for k, v in m.state_dict().items()}
               for name, m in models.items()}

    with torch.no_grad():
        sample = bow_data[0]
        values["bow_vector"] = make_bow_vector(sample[0], word_to_ix)
        values["bow_before"] = bow(values["bow_vector"])
    loss_function = nn.NLLLoss()
    optimizer = optim.SGD(bow.parameters(), lr=0.1)

    def bow_step(bow_vec, target):
        bow.zero_grad()
        loss = loss_function(bow(bow_vec), target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        bow_step = torch.compile(bow_step)
    losses = []
    for epoch in range(20):
        for instance, label in bow_data:
            losses.append(bow_step(make_bow_vector(instance, word_to_ix),
                                   make_target(label, label_to_ix)).item())
    with torch.no_grad():
        for instance, label in bow_test:
            values[f"bow_test_{label}"] = bow(make_bow_vector(instance, word_to_ix))
    values["creo_weights"] = next(bow.parameters())[:, word_to_ix["creo"]]

    # N-gram language model
    ngrams = [([test_sentence[i - j - 1] for j in range(CONTEXT_SIZE)], test_sentence[i])
              for i in range(CONTEXT_SIZE, len(test_sentence))]
    ngram_optimizer = optim.SGD(ngram_model.parameters(), lr=0.01)

    def ngram_step(context_idxs, target):
        ngram_model.zero_grad()
        log_probs = ngram_model(context_idxs)
        loss = loss_function(log_probs, target)
        loss.backward()
        ngram_optimizer.step()
        return loss

    if compile:
        ngram_step = torch.compile(ngram_step)
    totals = []
    for epoch in range(4):
        total_loss = 0
        for context, target in ngrams:
            context_idxs = torch.tensor([vocab_ix[w] for w in context], dtype=torch.long)
            loss = ngram_step(context_idxs, torch.tensor([vocab_ix[target]], dtype=torch.long))
            total_loss += loss.item()
            losses.append(loss.item())
        totals.append(total_loss)
    values["ngram_totals"] = np.array(totals)
    values["beauty_embedding"] = ngram_model.embeddings.weight[vocab_ix["beauty"]]

    # CBOW: two words either side predict the middle one
    cbow_data = [([test_sentence[i - 2], test_sentence[i - 1], test_sentence[i + 1],
                   test_sentence[i + 2]], test_sentence[i])
                 for i in range(2, len(test_sentence) - 2)]
    cbow_optimizer = optim.Adam(cbow.parameters(), lr=0.01)
    for epoch in range(2):
        for context, target in cbow_data:
            cbow_optimizer.zero_grad()
            ids = torch.tensor([vocab_ix[w] for w in context], dtype=torch.long)
            loss = F.nll_loss(cbow(ids), torch.tensor([vocab_ix[target]]))
            loss.backward()
            cbow_optimizer.step()
            losses.append(loss.item())
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
