"""FGSM adversarial example tutorial: a LeNet trained here (the tutorial loads a pretrained
one: saved and loaded back with torch.save/torch.load), then attacked one image at a time:
`data.requires_grad = True`, `model.eval()`, loss backward, `data.grad.data.sign()`, the
perturbed image clamped to [0, 1] and renormalized, accuracy per epsilon; synthetic 16x16
digits in [0, 1]."""
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self, dropout=0.5):
        super(Net, self).__init__()
        self.dropout = dropout
        self.conv1 = nn.Conv2d(1, 4, kernel_size=5)
        self.conv2 = nn.Conv2d(4, 8, kernel_size=3)
        self.conv2_drop = nn.Dropout2d(dropout)
        self.fc1 = nn.Linear(32, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 32)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def normalize(images):
    return (images - MEAN) / STD


def synthetic_digits(n, rng):
    """Ten blurred stroke patterns with noise, pixel values in [0, 1] (as ToTensor gives)."""
    patterns = np.random.default_rng(5).random((10, 16, 16)) > 0.6
    labels = rng.integers(0, 10, n)
    images = 0.8 * patterns[labels] + 0.2 * rng.random((n, 16, 16))
    return torch.tensor(images[:, None], dtype=torch.float32), torch.from_numpy(labels)


# FGSM attack code
def fgsm_attack(image, epsilon, data_grad):
    # Collect the element-wise sign of the data gradient
    sign_data_grad = data_grad.sign()
    # Create the perturbed image by adjusting each pixel of the input image
    perturbed_image = image + epsilon * sign_data_grad
    # Adding clipping to maintain [0,1] range
    perturbed_image = torch.clamp(perturbed_image, 0, 1)
    return perturbed_image


# restores the tensors to their original scale
def denorm(batch, mean=[MEAN], std=[STD]):
    if isinstance(mean, list):
        mean = torch.tensor(mean)
    if isinstance(std, list):
        std = torch.tensor(std)
    return batch * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)


def test(model, device, test_set, epsilon):
    # Accuracy counter
    correct = 0
    adv_examples = []

    # Loop over all examples in test set, one at a time
    for data, target in test_set:
        data, target = data.to(device), target.to(device)

        # Set requires_grad attribute of tensor. Important for Attack
        data.requires_grad = True

        # Forward pass the data through the model
        output = model(data)
        init_pred = output.max(1, keepdim=True)[1]  # get the index of the max log-probability

        # If the initial prediction is wrong, don't bother attacking, just move on
        if init_pred.item() != target.item():
            continue

        loss = F.nll_loss(output, target)
        model.zero_grad()
        loss.backward()

        # Collect ``datagrad``
        data_grad = data.grad.data

        # Restore the data to its original scale, attack, renormalize
        data_denorm = denorm(data)
        perturbed_data = fgsm_attack(data_denorm, epsilon, data_grad)
        perturbed_data_normalized = normalize(perturbed_data)

        # Re-classify the perturbed image
        output = model(perturbed_data_normalized)

        # Check for success
        final_pred = output.max(1, keepdim=True)[1]
        if final_pred.item() == target.item():
            correct += 1
            # Special case for saving 0 epsilon examples
            if epsilon == 0 and len(adv_examples) < 3:
                adv_ex = perturbed_data.squeeze().detach().cpu().numpy()
                adv_examples.append((init_pred.item(), final_pred.item(), adv_ex))
        else:
            # Save some adv examples for visualization later
            if len(adv_examples) < 3:
                adv_ex = perturbed_data.squeeze().detach().cpu().numpy()
                adv_examples.append((init_pred.item(), final_pred.item(), adv_ex))

    # Calculate final accuracy for this epsilon
    final_acc = correct / float(len(test_set))
    return final_acc, adv_examples


def main(seed=0, compile=False, initial_state=None, epochs=4, dropout=0.5,
         epsilons=(0, .05, .1, .2, .3)):
    torch.manual_seed(seed)
    device = torch.device("cpu")
    rng = np.random.default_rng(seed)
    images, labels = synthetic_digits(128, rng)
    train_set = torch.utils.data.TensorDataset(normalize(images), labels)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=32)
    test_images, test_labels = synthetic_digits(40, rng)
    # batch_size=1, as the tutorial's test loader
    test_set = [(normalize(test_images[i:i + 1]), test_labels[i:i + 1]) for i in range(40)]

    model = Net(dropout).to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def train_step(data, target):
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    model.train()
    for epoch in range(epochs):
        for data, target in train_loader:
            losses.append(train_step(data, target).item())

    # the tutorial's pretrained model: saved, then loaded into a fresh network
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet_mnist_model.pth")
        torch.save(model.state_dict(), path)
        model = Net(dropout).to(device)
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))

    # Set the model in evaluation mode. In this case this is for the Dropout layers
    model.eval()

    accuracies = []
    examples = []
    for eps in epsilons:
        acc, ex = test(model, device, test_set, eps)
        accuracies.append(acc)
        examples.append(ex)
    return {"losses": losses, "accuracies": accuracies, "examples": examples,
            "initial_state": initial}


if __name__ == "__main__":
    print(main()["accuracies"])
