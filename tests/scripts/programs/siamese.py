"""Siamese network (pytorch/examples siamese_network): a small residual CNN stands in for
resnet18 (its children but the last kept as an nn.Sequential backbone), the two images'
features concatenated with torch.cat, a Linear head and nn.Sigmoid, nn.BCELoss; weights set
with model.apply(init_weights) (xavier_uniform_, bias.data.fill_(0.01)); a Dataset of
same/different-class pairs drawn with Python's random; Adadelta + StepLR; synthetic digits."""
import random

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import Dataset


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super(BasicBlock, self).__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """resnet18's layout in miniature: stem, one residual stage, global pooling, fc."""

    def __init__(self, num_classes=10):
        super(TinyResNet, self).__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer1 = BasicBlock(8)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer1(x))
        return self.fc(torch.flatten(x, 1))


class SiameseNetwork(nn.Module):
    def __init__(self):
        super(SiameseNetwork, self).__init__()
        self.resnet = TinyResNet()

        # over-write the first conv layer to read one-channel images
        self.resnet.conv1 = nn.Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1),
                                      bias=False)
        self.fc_in_features = self.resnet.fc.in_features

        # remove the last layer of the backbone (the linear layer after avgpool)
        self.resnet = torch.nn.Sequential(*(list(self.resnet.children())[:-1]))

        # add linear layers to compare between the features of the two images
        self.fc = nn.Sequential(
            nn.Linear(self.fc_in_features * 2, 16),
            nn.ReLU(inplace=True),
            nn.Linear(16, 1),
        )

        self.sigmoid = nn.Sigmoid()

        # initialize the weights
        self.resnet.apply(self.init_weights)
        self.fc.apply(self.init_weights)

    def init_weights(self, m):
        if isinstance(m, nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            m.bias.data.fill_(0.01)

    def forward_once(self, x):
        output = self.resnet(x)
        output = output.view(output.size()[0], -1)
        return output

    def forward(self, input1, input2):
        # get two images' features
        output1 = self.forward_once(input1)
        output2 = self.forward_once(input2)

        # concatenate both images' features
        output = torch.cat((output1, output2), 1)

        # pass the concatenation to the linear layers, then the sigmoid
        output = self.fc(output)
        output = self.sigmoid(output)
        return output


class DigitImages:
    """MNIST's shape of data: uint8 images (N, 12, 12) and int64 targets, as tensors."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        # classes differ in stroke density, which pooled features can tell apart
        density = np.linspace(0.1, 0.9, 10)[:, None, None]
        templates = np.random.default_rng(99).random((10, 12, 12)) < density
        # every class several times: a pair of one class needs two different images
        self.targets = torch.from_numpy(rng.permutation(np.arange(n) % 10))
        images = 200 * templates[self.targets.numpy()] + 55 * rng.random((n, 12, 12))
        self.data = torch.from_numpy(images.astype(np.uint8))


class APP_MATCHER(Dataset):
    def __init__(self, n, seed):
        super(APP_MATCHER, self).__init__()
        self.dataset = DigitImages(n, seed)
        # (N, 12, 12) -> (N, 1, 12, 12): one gray-scale channel
        self.data = self.dataset.data.unsqueeze(1).clone()
        self.group_examples()

    def group_examples(self):
        """Group the examples' indices by class."""
        np_arr = np.array(self.dataset.targets.clone(), dtype=None, copy=None)
        self.grouped_examples = {}
        for i in range(0, 10):
            self.grouped_examples[i] = np.where((np_arr == i))[0]

    def __len__(self):
        return self.data.shape[0]

    def __getitem__(self, index):
        """Even index: two different images of one class (target 1); odd index: images of two
        different classes (target 0)."""
        selected_class = random.randint(0, 9)
        random_index_1 = random.randint(0, self.grouped_examples[selected_class].shape[0] - 1)
        index_1 = self.grouped_examples[selected_class][random_index_1]
        image_1 = self.data[index_1].clone().float()

        # same class
        if index % 2 == 0:
            random_index_2 = random.randint(0, self.grouped_examples[selected_class].shape[0] - 1)
            # ensure that the index of the second image isn't the same as the first image
            while random_index_2 == random_index_1:
                random_index_2 = random.randint(
                    0, self.grouped_examples[selected_class].shape[0] - 1)
            index_2 = self.grouped_examples[selected_class][random_index_2]
            image_2 = self.data[index_2].clone().float()
            target = torch.tensor(1, dtype=torch.float)
        # different class
        else:
            other_selected_class = random.randint(0, 9)
            while other_selected_class == selected_class:
                other_selected_class = random.randint(0, 9)
            random_index_2 = random.randint(
                0, self.grouped_examples[other_selected_class].shape[0] - 1)
            index_2 = self.grouped_examples[other_selected_class][random_index_2]
            image_2 = self.data[index_2].clone().float()
            target = torch.tensor(0, dtype=torch.float)

        return image_1, image_2, target


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    criterion = nn.BCELoss()
    with torch.no_grad():
        for (images_1, images_2, targets) in test_loader:
            images_1, images_2, targets = images_1.to(device), images_2.to(device), \
                targets.to(device)
            outputs = model(images_1, images_2).squeeze()
            test_loss += criterion(outputs, targets).sum().item()  # sum up batch loss
            pred = torch.where(outputs > 0.5, 1, 0)
            correct += pred.eq(targets.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    return test_loss, correct / len(test_loader.dataset)


def main(seed=0, compile=False, initial_state=None, epochs=3, lr=1.0, gamma=0.7):
    torch.manual_seed(seed)
    random.seed(seed)       # the pairs: the same in every library
    device = torch.device("cpu")
    train_loader = torch.utils.data.DataLoader(APP_MATCHER(64, seed), batch_size=16)
    test_loader = torch.utils.data.DataLoader(APP_MATCHER(64, seed + 1), batch_size=32)

    model = SiameseNetwork().to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.Adadelta(model.parameters(), lr=lr)
    criterion = nn.BCELoss()

    def train_step(images_1, images_2, targets):
        optimizer.zero_grad()
        outputs = model(images_1, images_2).squeeze()
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    scheduler = StepLR(optimizer, step_size=1, gamma=gamma)
    losses, test_losses, accuracies = [], [], []
    for epoch in range(1, epochs + 1):
        model.train()
        for batch_idx, (images_1, images_2, targets) in enumerate(train_loader):
            images_1, images_2, targets = images_1.to(device), images_2.to(device), \
                targets.to(device)
            losses.append(train_step(images_1, images_2, targets).item())
        test_loss, accuracy = test(model, device, test_loader)
        test_losses.append(test_loss)
        accuracies.append(accuracy)
        scheduler.step()
    return {"losses": losses, "test_losses": test_losses, "accuracies": accuracies,
            "lr": scheduler.get_last_lr(), "initial_state": initial,
            "running_mean": model.resnet[1].running_mean.numpy().copy()}


if __name__ == "__main__":
    print(main())
