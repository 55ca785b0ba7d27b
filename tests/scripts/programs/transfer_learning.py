"""The "Transfer Learning for Computer Vision" tutorial's patterns (no torchvision: a small
"pretrained" backbone stands in for resnet18): train_model with phases under
torch.set_grad_enabled(phase == 'train'), running_corrects from torch.sum(preds == labels.data)
and .double() accuracy, the best weights kept with copy.deepcopy(model.state_dict()) and saved
in a TemporaryDirectory; then the fixed-feature-extractor variant: requires_grad = False on the
backbone, a new fc, and an optimizer over model.fc.parameters() only."""
import copy
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim import lr_scheduler


class Backbone(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.AdaptiveAvgPool2d((1, 1)))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def make_loaders(seed):
    rng = np.random.default_rng(seed)
    loaders, sizes = {}, {}
    prototypes = np.random.default_rng(9).standard_normal((2, 3, 12, 12))
    for phase, n in [("train", 48), ("val", 24)]:
        labels = rng.integers(0, 2, n)
        images = prototypes[labels] + 0.7 * rng.standard_normal((n, 3, 12, 12))
        dataset = torch.utils.data.TensorDataset(torch.tensor(images, dtype=torch.float32),
                                                 torch.tensor(labels))
        loaders[phase] = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=False)
        sizes[phase] = len(dataset)
    return loaders, sizes


def train_model(model, criterion, optimizer, scheduler, dataloaders, dataset_sizes,
                num_epochs, losses):
    with tempfile.TemporaryDirectory() as tempdir:
        best_model_params_path = os.path.join(tempdir, 'best_model_params.pt')
        torch.save(model.state_dict(), best_model_params_path)
        best_acc = 0.0
        history = []
        for epoch in range(num_epochs):
            for phase in ['train', 'val']:
                if phase == 'train':
                    model.train()
                else:
                    model.eval()
                running_loss = 0.0
                running_corrects = 0
                for inputs, labels in dataloaders[phase]:
                    optimizer.zero_grad()
                    with torch.set_grad_enabled(phase == 'train'):
                        outputs = model(inputs)
                        _, preds = torch.max(outputs, 1)
                        loss = criterion(outputs, labels)
                        if phase == 'train':
                            loss.backward()
                            optimizer.step()
                            losses.append(loss.item())
                    running_loss += loss.item() * inputs.size(0)
                    running_corrects += torch.sum(preds == labels.data)
                if phase == 'train':
                    scheduler.step()
                epoch_loss = running_loss / dataset_sizes[phase]
                epoch_acc = running_corrects.double() / dataset_sizes[phase]
                history.append((phase, epoch_loss, float(epoch_acc)))
                if phase == 'val' and epoch_acc > best_acc:
                    best_acc = epoch_acc
                    best_model_wts = copy.deepcopy(model.state_dict())
                    torch.save(best_model_wts, best_model_params_path)
        model.load_state_dict(torch.load(best_model_params_path, weights_only=True))
    return model, history, float(best_acc)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    dataloaders, dataset_sizes = make_loaders(seed)
    model_ft = Backbone()
    if initial_state is not None:
        model_ft.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model_ft.state_dict().items()}
    num_ftrs = model_ft.fc.in_features
    model_ft.fc = nn.Linear(num_ftrs, 2)
    with torch.no_grad():                       # the new head's weights, the same in both runs
        model_ft.fc.weight.copy_(torch.linspace(-0.3, 0.3, 32).view(2, 16))
        model_ft.fc.bias.zero_()
    criterion = nn.CrossEntropyLoss()
    optimizer_ft = optim.SGD(model_ft.parameters(), lr=0.01, momentum=0.9)
    exp_lr_scheduler = lr_scheduler.StepLR(optimizer_ft, step_size=1, gamma=0.1)
    losses = []
    model_ft, history_ft, best_ft = train_model(model_ft, criterion, optimizer_ft,
                                                exp_lr_scheduler, dataloaders, dataset_sizes,
                                                2, losses)

    # ConvNet as fixed feature extractor
    model_conv = copy.deepcopy(model_ft)
    for param in model_conv.parameters():
        param.requires_grad = False
    model_conv.fc = nn.Linear(model_conv.fc.in_features, 2)
    with torch.no_grad():
        model_conv.fc.weight.copy_(torch.linspace(0.2, -0.2, 32).view(2, 16))
        model_conv.fc.bias.fill_(0.05)
    optimizer_conv = optim.SGD(model_conv.fc.parameters(), lr=0.05, momentum=0.9)
    exp_lr_scheduler = lr_scheduler.StepLR(optimizer_conv, step_size=1, gamma=0.1)
    model_conv, history_conv, best_conv = train_model(model_conv, criterion, optimizer_conv,
                                                      exp_lr_scheduler, dataloaders,
                                                      dataset_sizes, 2, losses)
    frozen = all(p.grad is None for p in model_conv.features.parameters())
    return {"losses": losses, "initial_state": initial, "history": history_ft + history_conv,
            "best": (best_ft, best_conv), "frozen": frozen}


if __name__ == "__main__":
    print(main())
