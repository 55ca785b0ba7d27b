"""Classifying names with a character-level RNN (tutorial "NLP From Scratch"): one-hot letter
tensors, nn.RNN over each name, the last hidden state to LogSoftmax, NLLLoss summed over a
mini-batch, clip_grad_norm_, SGD; names made up from per-language syllables."""
import random
import string

import numpy as np
import torch
import torch.nn as nn

allowed_characters = string.ascii_letters + " .,;'"
n_letters = len(allowed_characters)


def letterToIndex(letter):
    if letter not in allowed_characters:
        return allowed_characters.find("_")
    return allowed_characters.find(letter)


def lineToTensor(line):
    tensor = torch.zeros(len(line), 1, n_letters)
    for li, letter in enumerate(line):
        tensor[li][0][letterToIndex(letter)] = 1
    return tensor


class CharRNN(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(CharRNN, self).__init__()
        self.rnn = nn.RNN(input_size, hidden_size)
        self.h2o = nn.Linear(hidden_size, output_size)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, line_tensor):
        rnn_out, hidden = self.rnn(line_tensor)
        output = self.h2o(hidden[0])
        output = self.softmax(output)
        return output


def make_names(rng):
    syllables = {"Italian": ["ro", "si", "ni", "lo", "ca"], "German": ["berg", "mann", "schm",
                                                                     "wald"],
                 "Japanese": ["ka", "to", "mi", "yo", "shi"], "Polish": ["ski", "wicz", "czyk"]}
    data = []
    for label, parts in syllables.items():
        for _ in range(12):
            name = "".join(rng.choice(parts) for _ in range(rng.integers(2, 4)))
            data.append((name.capitalize(), label))
    return data, list(syllables)


def main(seed=0, compile=False, initial_state=None, n_epoch=3, n_batch_size=8,
         learning_rate=0.2):
    torch.manual_seed(seed)
    random.seed(seed)
    training_data, labels_uniq = make_names(np.random.default_rng(seed))
    rnn = CharRNN(n_letters, 32, len(labels_uniq))
    if initial_state is not None:
        rnn.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in rnn.state_dict().items()}
    criterion = nn.NLLLoss()
    optimizer = torch.optim.SGD(rnn.parameters(), lr=learning_rate)
    all_losses = []
    rnn.train()
    for iter in range(1, n_epoch + 1):
        rnn.zero_grad()
        batches = list(range(len(training_data)))
        random.shuffle(batches)
        batches = np.array_split(batches, len(batches) // n_batch_size)
        current_loss = 0
        for idx, batch in enumerate(batches):
            batch_loss = 0
            for i in batch:
                text, label = training_data[i]
                label_tensor = torch.tensor([labels_uniq.index(label)], dtype=torch.long)
                output = rnn(lineToTensor(text))
                loss = criterion(output, label_tensor)
                batch_loss += loss
            batch_loss.backward()
            nn.utils.clip_grad_norm_(rnn.parameters(), 3)
            optimizer.step()
            optimizer.zero_grad()
            current_loss += batch_loss.item() / len(batch)
        all_losses.append(current_loss / len(batches))
    return {"losses": all_losses, "initial_state": initial}


if __name__ == "__main__":
    print(main())
