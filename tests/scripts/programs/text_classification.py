"""Text classification tutorial (torchtext's AG_NEWS recipe) on a tiny synthetic corpus: a
vocabulary built by hand, a collate_fn that concatenates token ids and builds offsets with
cumsum, nn.EmbeddingBag (mode "mean") + Linear with uniform init, SGD + StepLR,
clip_grad_norm_, random_split for a validation set, accuracy bookkeeping per epoch."""
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.dataset import random_split

WORDS = ["w%d" % i for i in range(40)]


def make_corpus(n, rng):
    """(label, text) pairs: each class prefers its own ten words."""
    items = []
    for _ in range(n):
        label = int(rng.integers(1, 5))
        length = int(rng.integers(3, 12))
        own = rng.integers(0, 10, length) + 10 * (label - 1)
        noise = rng.integers(0, 40, length)
        words = np.where(rng.random(length) < 0.6, own, noise)
        items.append((label, " ".join(WORDS[i] for i in words)))
    return items


class TextClassificationModel(nn.Module):
    def __init__(self, vocab_size, embed_dim, num_class):
        super(TextClassificationModel, self).__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, sparse=False)
        self.fc = nn.Linear(embed_dim, num_class)
        self.init_weights()

    def init_weights(self):
        initrange = 0.5
        self.embedding.weight.data.uniform_(-initrange, initrange)
        self.fc.weight.data.uniform_(-initrange, initrange)
        self.fc.bias.data.zero_()

    def forward(self, text, offsets):
        embedded = self.embedding(text, offsets)
        return self.fc(embedded)


def main(seed=0, compile=False, initial_state=None, epochs=3):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_iter = make_corpus(160, rng)
    test_iter = make_corpus(48, rng)
    vocab = {"<unk>": 0}
    for _, text in train_iter:
        for token in text.split():
            vocab.setdefault(token, len(vocab))
    text_pipeline = lambda x: [vocab.get(token, 0) for token in x.split()]
    label_pipeline = lambda x: int(x) - 1

    def collate_batch(batch):
        label_list, text_list, offsets = [], [], [0]
        for _label, _text in batch:
            label_list.append(label_pipeline(_label))
            processed_text = torch.tensor(text_pipeline(_text), dtype=torch.int64)
            text_list.append(processed_text)
            offsets.append(processed_text.size(0))
        label_list = torch.tensor(label_list, dtype=torch.int64)
        offsets = torch.tensor(offsets[:-1]).cumsum(dim=0)
        text_list = torch.cat(text_list)
        return label_list, text_list, offsets

    num_class = len(set([label for (label, text) in train_iter]))
    vocab_size = len(vocab)
    emsize = 16
    model = TextClassificationModel(vocab_size, emsize, num_class)
    if initial_state is not None:
        model.load_state_dict(initial_state["model"])
    initial = {"model": {k: v.clone() for k, v in model.state_dict().items()}}

    LR, BATCH_SIZE = 5, 16
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1.0, gamma=0.1)

    num_train = int(len(train_iter) * 0.95)
    split_train_, split_valid_ = random_split(
        train_iter, [num_train, len(train_iter) - num_train],
        generator=torch.Generator().manual_seed(42))
    split_sizes = (len(split_train_), len(split_valid_))
    disjoint = not set(split_train_.indices) & set(split_valid_.indices)
    train_indices = list(split_train_.indices)
    train_dataloader = DataLoader(split_train_, batch_size=BATCH_SIZE, collate_fn=collate_batch)
    valid_dataloader = DataLoader(split_valid_, batch_size=BATCH_SIZE, collate_fn=collate_batch)
    test_dataloader = DataLoader(test_iter, batch_size=BATCH_SIZE, collate_fn=collate_batch)

    def train_step(label, text, offsets):
        optimizer.zero_grad()
        predicted_label = model(text, offsets)
        loss = criterion(predicted_label, label)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        return loss, predicted_label

    if compile:
        train_step = torch.compile(train_step)

    def train(dataloader, losses):
        model.train()
        total_acc, total_count = 0, 0
        for idx, (label, text, offsets) in enumerate(dataloader):
            loss, predicted_label = train_step(label, text, offsets)
            losses.append(loss.item())
            total_acc += (predicted_label.argmax(1) == label).sum().item()
            total_count += label.size(0)
        return total_acc / total_count

    def evaluate(dataloader):
        model.eval()
        total_acc, total_count = 0, 0
        with torch.no_grad():
            for idx, (label, text, offsets) in enumerate(dataloader):
                predicted_label = model(text, offsets)
                total_acc += (predicted_label.argmax(1) == label).sum().item()
                total_count += label.size(0)
        return total_acc / total_count

    losses, accuracies, lrs = [], [], []
    total_accu = None
    for epoch in range(1, epochs + 1):
        epoch_start_time = time.time()
        train_acc = train(train_dataloader, losses)
        accu_val = evaluate(valid_dataloader)
        if total_accu is not None and total_accu > accu_val:
            scheduler.step()
        else:
            total_accu = accu_val
        accuracies.append((train_acc, accu_val))
        lrs.append(scheduler.get_last_lr()[0])
    test_acc = evaluate(test_dataloader)
    return {"losses": losses, "accuracies": accuracies, "test_acc": test_acc, "lrs": lrs,
            "split_sizes": split_sizes, "disjoint": disjoint, "train_indices": train_indices,
            "initial_state": initial}


if __name__ == "__main__":
    print(main())
