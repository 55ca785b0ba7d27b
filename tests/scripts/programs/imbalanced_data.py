"""The "Classifying an imbalanced dataset" tutorial at small sizes: a CIFAR-like synthetic
dataset, undersampled to 10% for its first five classes by NumPy index selection; a LeNet
trained on it with a shuffling DataLoader, then with a `WeightedRandomSampler` (per-sample
weights from the reciprocal class counts, `torch.from_numpy` of float64), then with a weighted
`NLLLoss`; evaluation builds a confusion matrix by tensor indexing (`cm[t, p] += 1`) and reports
per-class accuracies. DataLoaders load in the main process (the tutorial uses 2 workers)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.sampler import WeightedRandomSampler

nb_classes = 10
batch_size = 16


class SyntheticCIFAR(Dataset):
    """Images whose class k brightens channel k % 3 in a k-dependent band, plus noise."""

    def __init__(self, rng, per_class):
        self.targets = np.repeat(np.arange(nb_classes), per_class)
        self.data = rng.normal(0, 1, size=(len(self.targets), 3, 32, 32)).astype(np.float32)
        for i, k in enumerate(self.targets):
            self.data[i, k % 3, 3 * k:3 * k + 4, :] += 2.0

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, idx):
        return torch.from_numpy(self.data[idx]), int(self.targets[idx])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_dataset, test_dataset = SyntheticCIFAR(rng, 12), SyntheticCIFAR(rng, 4)
    train_targets, test_targets = train_dataset.targets, test_dataset.targets
    _, train_class_counts = np.unique(train_targets, return_counts=True)

    # undersample the first five classes to 10% (at least one sample each)
    imbal_class_prop = np.hstack(([0.1] * 5, [1.0] * 5))
    keep = [np.where(train_targets == i)[0][:max(1, int(c * p))]
            for i, (c, p) in enumerate(zip(train_class_counts, imbal_class_prop))]
    keep = np.hstack(keep)
    train_dataset.targets = train_targets[keep]
    train_dataset.data = train_dataset.data[keep]
    values = {"train_counts": str(np.unique(train_dataset.targets, return_counts=True)[1])}

    def new_model(key):
        model = Net()
        if initial_state is not None:
            model.load_state_dict(initial_state[key])
        initial[key] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    initial = {}
    losses = []

    def train(model, loader, criterion, epochs):
        optimizer = optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

        def step(data, target):
            optimizer.zero_grad()
            loss = criterion(model(data), target)
            loss.backward()
            optimizer.step()
            return loss

        if compile:
            step = torch.compile(step)
        model.train()
        for epoch in range(epochs):
            for data, target in loader:
                if len(target) == batch_size:        # one batch shape per compiled step
                    losses.append(step(data, target).item())

    def evaluate(model):
        model.eval()
        test_loader = DataLoader(test_dataset, batch_size=batch_size, shuffle=False)
        confusion_matrix = torch.zeros(nb_classes, nb_classes)
        correct = total = 0
        with torch.no_grad():
            for data, target in test_loader:
                _, preds = torch.max(model(data), 1)
                correct += (preds == target).sum().item()
                total += target.size(0)
                for t, p in zip(target, preds):
                    confusion_matrix[t, p] += 1
        class_accuracies = confusion_matrix.diag() / confusion_matrix.sum(1)
        return 100 * correct / total, class_accuracies

    shuffled = DataLoader(train_dataset, batch_size=batch_size, shuffle=True)
    model = new_model("plain")
    train(model, shuffled, nn.NLLLoss(), 2)
    values["plain_acc"], values["plain_class_acc"] = evaluate(model)

    weights = 1. / np.unique(train_dataset.targets, return_counts=True)[1]
    samples_weights = torch.from_numpy(weights[train_dataset.targets])
    sampler = WeightedRandomSampler(weights=samples_weights, num_samples=len(samples_weights),
                                    replacement=True)
    sampled = DataLoader(train_dataset, batch_size=batch_size, sampler=sampler)
    first = next(iter(sampled))[1].numpy()
    values["sampled_batch"] = str(first.tolist())
    model = new_model("sampler")
    train(model, sampled, nn.NLLLoss(), 2)
    values["sampler_acc"], values["sampler_class_acc"] = evaluate(model)

    class_weights = torch.from_numpy(weights).float()
    model = new_model("weighted")
    train(model, shuffled, nn.NLLLoss(weight=class_weights), 2)
    values["weighted_acc"], values["weighted_class_acc"] = evaluate(model)
    values["samples_weights_dtype"] = str(samples_weights.dtype).split(".")[-1]
    return {"losses": losses, "values": values, "initial_state": initial}
