"""The introyt "building models" tutorial: a TinyModel printed with its children and
parameters, a Linear layer's parameters and output printed, a LeNet-style CNN, an LSTM
part-of-speech tagger, max pooling, BatchNorm1d on a shifted input and dropout; what it prints
is compared as text, and the tagger trains a few steps."""
import torch
import torch.nn.functional as F


class TinyModel(torch.nn.Module):
    def __init__(self):
        super(TinyModel, self).__init__()
        self.linear1 = torch.nn.Linear(100, 200)
        self.activation = torch.nn.ReLU()
        self.linear2 = torch.nn.Linear(200, 10)
        self.softmax = torch.nn.Softmax()

    def forward(self, x):
        return self.softmax(self.linear2(self.activation(self.linear1(x))))


class LeNet(torch.nn.Module):
    def __init__(self):
        super(LeNet, self).__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, 5)
        self.conv2 = torch.nn.Conv2d(6, 16, 3)
        self.fc1 = torch.nn.Linear(16 * 6 * 6, 120)
        self.fc2 = torch.nn.Linear(120, 84)
        self.fc3 = torch.nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.num_flat_features(x))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def num_flat_features(self, x):
        num_features = 1
        for s in x.size()[1:]:
            num_features *= s
        return num_features


class LSTMTagger(torch.nn.Module):
    def __init__(self, embedding_dim, hidden_dim, vocab_size, tagset_size):
        super(LSTMTagger, self).__init__()
        self.hidden_dim = hidden_dim
        self.word_embeddings = torch.nn.Embedding(vocab_size, embedding_dim)
        self.lstm = torch.nn.LSTM(embedding_dim, hidden_dim)
        self.hidden2tag = torch.nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence):
        embeds = self.word_embeddings(sentence)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
        return F.log_softmax(tag_space, dim=1)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    printed = []
    tinymodel = TinyModel()
    printed += ["The model:", tinymodel, "\n\nJust one layer:", tinymodel.linear2]
    printed.append("\n\nModel params:")
    printed += [tuple(p.shape) for p in tinymodel.parameters()]
    printed += [name for name, _ in tinymodel.named_children()]
    lin = torch.nn.Linear(3, 2)
    x = torch.rand(1, 3)
    printed += ["Input:", x, "\n\nWeight and Bias parameters:"]
    printed += list(lin.parameters())
    printed += ["\n\nOutput:", lin(x)]
    net = LeNet()
    printed += [net, net(torch.rand(1, 1, 32, 32)).shape]
    my_tensor = torch.rand(1, 6, 6)
    printed += [my_tensor, torch.nn.MaxPool2d(3)(my_tensor)]
    my_tensor = torch.rand(1, 4, 4) * 20 + 5
    norm_layer = torch.nn.BatchNorm1d(4)
    normed = norm_layer(my_tensor)
    printed += [my_tensor, my_tensor.mean(), normed, norm_layer.running_mean, norm_layer]
    dropout = torch.nn.Dropout(p=0.4)
    printed += [dropout, dropout(torch.rand(1, 4, 4)).shape]

    tagger = LSTMTagger(6, 8, 10, 3)
    if initial_state is not None:
        tagger.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in tagger.state_dict().items()}
    printed.append(tagger)
    sentences = [torch.tensor([1, 4, 2, 7]), torch.tensor([3, 3, 9, 0, 5])]
    tags = [torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 0, 1, 0])]
    loss_function = torch.nn.NLLLoss()
    optimizer = torch.optim.SGD(tagger.parameters(), lr=0.1)

    def train_step(sentence, target):
        tagger.zero_grad()
        loss = loss_function(tagger(sentence), target)
        loss.backward()
        optimizer.step()
        return loss

    step = torch.compile(train_step) if compile else train_step
    losses = []
    for epoch in range(3):
        for sentence, target in zip(sentences, tags):
            losses.append(step(sentence, target).item())
    values = {"printed": "\n".join(str(p) for p in printed),
              "tag_scores": tagger(sentences[0]).detach()}
    return {"losses": losses, "values": values, "initial_state": initial}
