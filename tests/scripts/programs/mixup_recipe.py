"""An image-classification training recipe as Kaggle notebooks and training scripts write it:
a small CNN with BatchNorm, mixup and CutMix chosen per batch (lambda from `np.random.beta`, the
partner batch by `torch.randperm`, the CutMix box cut from the lambda and the mixed lambda
recomputed from its area), a criterion summing a focal loss (log_softmax, gather, (1 - p)^gamma)
and `CrossEntropyLoss(label_smoothing=0.1)`, mixed as lam * crit(y_a) + (1 - lam) * crit(y_b);
SGD with Nesterov momentum and weight decay, `ReduceLROnPlateau` stepped on the validation
loss, early stopping with patience, and the best model kept by `torch.save` of its state_dict,
loaded back by `torch.load` at the end. The model is the compiled function
(`torch.compile(model)`, whose checkpoint keys carry `_orig_mod.`)."""
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class FocalLoss(nn.Module):
    def __init__(self, gamma=2.0, reduction="mean"):
        super().__init__()
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, input, target):
        logpt = F.log_softmax(input, dim=1)
        logpt = logpt.gather(1, target.view(-1, 1)).view(-1)
        pt = logpt.exp()
        loss = -1 * (1 - pt) ** self.gamma * logpt
        return loss.mean() if self.reduction == "mean" else loss.sum()


class Criterion(nn.Module):
    def __init__(self):
        super().__init__()
        self.focal = FocalLoss(gamma=2.0)
        self.ce = nn.CrossEntropyLoss(label_smoothing=0.1)

    def forward(self, output, target):
        return self.focal(output, target) + self.ce(output, target)


def rand_bbox(size, lam, rng):
    W, H = size[2], size[3]
    cut_rat = np.sqrt(1. - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = rng.randint(W), rng.randint(H)
    bbx1, bby1 = np.clip(cx - cut_w // 2, 0, W), np.clip(cy - cut_h // 2, 0, H)
    bbx2, bby2 = np.clip(cx + cut_w // 2, 0, W), np.clip(cy + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def mixup_criterion(criterion, pred, y_a, y_b, lam):
    return lam * criterion(pred, y_a) + (1 - lam) * criterion(pred, y_b)


def make_images(n, rng):
    """16x16 RGB images of four classes: the dominant colour channel and a bright quadrant."""
    labels = rng.integers(0, 4, n)
    x = 0.3 * rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    for i, c in enumerate(labels):
        x[i, c % 3] += 0.8
        q = (c // 2) * 8
        x[i, :, q:q + 8, (c % 2) * 8:(c % 2) * 8 + 8] += 0.6
    return torch.from_numpy(x), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    aug_rng = np.random.RandomState(seed)
    data_rng = np.random.default_rng(21)
    train_x, train_y = make_images(96, data_rng)
    val_x, val_y = make_images(32, data_rng)
    model = Net()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = Criterion()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                           patience=0)
    checkpoint = os.path.join(tempfile.mkdtemp(), "best.pth")

    def train_step(inputs, targets_a, targets_b, lam):
        outputs = model(inputs)
        loss = mixup_criterion(criterion, outputs, targets_a, targets_b, lam)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        # the recipe compiles the model; the mixed loss around it stays eager
        model = torch.compile(model)
    losses, val_losses, lrs, kinds = [], [], [], []
    best_loss, best_epoch, bad_epochs, patience = float("inf"), -1, 0, 2
    for epoch in range(8):
        model.train()
        for i in range(0, 96, 32):
            inputs, targets = train_x[i:i + 32].clone(), train_y[i:i + 32]
            lam = aug_rng.beta(1.0, 1.0)
            rand_index = torch.randperm(inputs.size()[0])
            targets_a, targets_b = targets, targets[rand_index]
            if aug_rng.rand() < 0.5:
                kinds.append("cutmix")
                bbx1, bby1, bbx2, bby2 = rand_bbox(inputs.size(), lam, aug_rng)
                inputs[:, :, bbx1:bbx2, bby1:bby2] = inputs[rand_index, :, bbx1:bbx2, bby1:bby2]
                # the mixed lambda is the area actually kept
                lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (inputs.size()[-1] *
                                                            inputs.size()[-2]))
            else:
                kinds.append("mixup")
                inputs = lam * inputs + (1 - lam) * inputs[rand_index, :]
            losses.append(train_step(inputs, targets_a, targets_b, lam).item())

        model.eval()
        with torch.no_grad():
            val_loss = criterion(model(val_x), val_y).item()
        val_losses.append(val_loss)
        scheduler.step(val_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
        if val_loss < best_loss:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            torch.save(model.state_dict(), checkpoint)
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                break

    model.load_state_dict(torch.load(checkpoint))
    model.eval()
    with torch.no_grad():
        logits = model(val_x)
        best_again = criterion(logits, val_y).item()
        accuracy = int((logits.argmax(1) == val_y).sum())
    values = {"val_losses": np.array(val_losses), "lrs": str(lrs), "kinds": ",".join(kinds),
              "best_epoch": best_epoch, "best_loss": best_loss, "best_again": best_again,
              "accuracy": accuracy, "logits": logits}
    return {"losses": losses, "values": values, "initial_state": initial}
