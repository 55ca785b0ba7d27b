"""The "Visualizing models, data, and training with TensorBoard" tutorial's patterns on small
synthetic 28x28 images (no torchvision): a SummaryWriter, a batch of images, the model's graph,
an embedding with label images, running-loss scalars every few steps, and per-class PR curves
from softmax outputs of a no_grad test pass."""
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

classes = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
           'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle Boot')


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 4 * 4)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    prototypes = np.random.default_rng(7).random((10, 28, 28)) > 0.7
    images = prototypes[labels] * 0.8 + 0.2 * rng.random((n, 28, 28))
    return TensorDataset(torch.tensor(images[:, None], dtype=torch.float32),
                         torch.tensor(labels))


def main(seed=0, compile=False, initial_state=None, log_dir=None):
    torch.manual_seed(seed)
    trainloader = DataLoader(make_data(96, 1), batch_size=8, shuffle=False)
    testloader = DataLoader(make_data(32, 2), batch_size=8, shuffle=False)
    net = Net()
    if initial_state is not None:
        net.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    log_dir = log_dir or tempfile.mkdtemp()
    writer = SummaryWriter(log_dir + '/fashion_mnist_experiment_1')

    dataiter = iter(trainloader)
    images, labels = next(dataiter)
    writer.add_images('four_fashion_mnist_images', images[:4])
    writer.add_graph(net, images)
    features = images.view(-1, 28 * 28)
    class_labels = [classes[lab] for lab in labels]
    writer.add_embedding(features, metadata=class_labels, label_img=images)

    def train_step(inputs, labels):
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    running_loss = 0.0
    for epoch in range(2):
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data
            loss = train_step(inputs, labels)
            losses.append(loss.item())
            running_loss += loss.item()
            if i % 4 == 3:
                writer.add_scalar('training loss', running_loss / 4,
                                  epoch * len(trainloader) + i)
                running_loss = 0.0

    class_probs, class_label = [], []
    with torch.no_grad():
        for data in testloader:
            images, labels = data
            output = net(images)
            class_probs_batch = [F.softmax(el, dim=0) for el in output]
            class_probs.append(class_probs_batch)
            class_label.append(labels)
    test_probs = torch.cat([torch.stack(batch) for batch in class_probs])
    test_label = torch.cat(class_label)
    for class_index in range(len(classes)):
        tensorboard_truth = test_label == class_index
        tensorboard_probs = test_probs[:, class_index]
        writer.add_pr_curve(classes[class_index], tensorboard_truth, tensorboard_probs,
                            global_step=0)
    writer.close()
    return {"losses": losses, "initial_state": initial, "test_probs": test_probs,
            "log_dir": log_dir + '/fashion_mnist_experiment_1'}


if __name__ == "__main__":
    print(main()["losses"])
