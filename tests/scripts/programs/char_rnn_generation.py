"""The "NLP From Scratch: Generating Names with a Character-Level RNN" tutorial's patterns: an
RNN module built from Linear layers over torch.cat((category, input, hidden), 1), one-hot
tensors made by indexing zeros, LongTensor targets unsqueeze_'d in place, the loss summed over
a name's letters, a manual SGD update through p.data.add_(p.grad.data, alpha=-lr), and
sampling with topk under no_grad. Dropout is a parameter so the losses can be compared step by
step (the tutorial's 0.1 draws different masks in each library)."""
import string

import numpy as np
import torch
import torch.nn as nn

all_letters = string.ascii_letters + " .,;'-"
n_letters = len(all_letters) + 1      # plus EOS marker
category_lines = {
    "English": ["Abbott", "Bailey", "Carter", "Dalton", "Ellis", "Fisher"],
    "Italian": ["Abbadelli", "Bellini", "Cavalli", "Donati", "Esposito", "Fabbri"],
    "Russian": ["Abakumov", "Baranov", "Chekhov", "Dimitrov", "Egorov", "Fedorov"],
}
all_categories = list(category_lines)
n_categories = len(all_categories)


class RNN(nn.Module):
    def __init__(self, input_size, hidden_size, output_size, dropout=0.1):
        super(RNN, self).__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(n_categories + input_size + hidden_size, hidden_size)
        self.i2o = nn.Linear(n_categories + input_size + hidden_size, output_size)
        self.o2o = nn.Linear(hidden_size + output_size, output_size)
        self.dropout = nn.Dropout(dropout)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, category, input, hidden):
        input_combined = torch.cat((category, input, hidden), 1)
        hidden = self.i2h(input_combined)
        output = self.i2o(input_combined)
        output_combined = torch.cat((hidden, output), 1)
        output = self.o2o(output_combined)
        output = self.dropout(output)
        output = self.softmax(output)
        return output, hidden

    def initHidden(self):
        return torch.zeros(1, self.hidden_size)


def categoryTensor(category):
    li = all_categories.index(category)
    tensor = torch.zeros(1, n_categories)
    tensor[0][li] = 1
    return tensor


def inputTensor(line):
    tensor = torch.zeros(len(line), 1, n_letters)
    for li in range(len(line)):
        letter = line[li]
        tensor[li][0][all_letters.find(letter)] = 1
    return tensor


def targetTensor(line):
    letter_indexes = [all_letters.find(line[li]) for li in range(1, len(line))]
    letter_indexes.append(n_letters - 1)  # EOS
    return torch.LongTensor(letter_indexes)


def main(seed=0, compile=False, initial_state=None, dropout=0.0, iterations=24):
    torch.manual_seed(seed)
    rng = np.random.default_rng(2)
    rnn = RNN(n_letters, 32, n_letters, dropout)
    if initial_state is not None:
        rnn.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in rnn.state_dict().items()}
    criterion = nn.NLLLoss()
    learning_rate = 0.05

    def train(category_tensor, input_line_tensor, target_line_tensor):
        target_line_tensor.unsqueeze_(-1)
        hidden = rnn.initHidden()
        rnn.zero_grad()
        loss = torch.Tensor([0])
        for i in range(input_line_tensor.size(0)):
            output, hidden = rnn(category_tensor, input_line_tensor[i], hidden)
            l = criterion(output, target_line_tensor[i])
            loss += l
        loss.backward()
        for p in rnn.parameters():
            p.data.add_(p.grad.data, alpha=-learning_rate)
        return output, loss.item() / input_line_tensor.size(0)

    losses = []
    for it in range(iterations):
        category = all_categories[int(rng.integers(n_categories))]
        lines = category_lines[category]
        line = lines[int(rng.integers(len(lines)))]
        output, loss = train(categoryTensor(category), inputTensor(line), targetTensor(line))
        losses.append(loss)

    max_length = 10

    def sample(category, start_letter='A'):
        with torch.no_grad():
            category_tensor = categoryTensor(category)
            input = inputTensor(start_letter)
            hidden = rnn.initHidden()
            output_name = start_letter
            for i in range(max_length):
                output, hidden = rnn(category_tensor, input[0], hidden)
                topv, topi = output.topk(1)
                topi = topi[0][0]
                if topi == n_letters - 1:
                    break
                else:
                    letter = all_letters[topi]
                    output_name += letter
                input = inputTensor(letter)
            return output_name

    rnn.eval()
    names = [sample(c, s) for c in all_categories for s in "ABC"]
    return {"losses": losses, "initial_state": initial, "names": names}


if __name__ == "__main__":
    print(main())
