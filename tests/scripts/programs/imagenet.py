"""pytorch/examples imagenet/main.py's scaffolding on small synthetic images: a ResNet built
from BasicBlocks (torchvision's is not used), cudnn flags, the accelerator probes, SGD with
momentum and weight decay, StepLR, AverageMeter/ProgressMeter, top-1/top-5 accuracy,
save_checkpoint with a best-model copy, and resuming from it into a fresh model."""
import os
import shutil
import tempfile
import time
from enum import Enum

import numpy as np
import torch
import torch.backends.cudnn as cudnn
import torch.nn as nn
import torch.optim
import torch.utils.data
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import Subset


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, layers=(1, 1), num_classes=10, width=8):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 2 * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class Summary(Enum):
    NONE = 0
    AVERAGE = 1


class AverageMeter(object):
    def __init__(self, name, fmt=':f', summary_type=Summary.AVERAGE):
        self.name, self.fmt, self.summary_type = name, fmt, summary_type
        self.reset()

    def reset(self):
        self.val = self.avg = self.sum = self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count

    def __str__(self):
        fmtstr = '{name} {val' + self.fmt + '} ({avg' + self.fmt + '})'
        return fmtstr.format(**self.__dict__)


class ProgressMeter(object):
    def __init__(self, num_batches, meters, prefix=""):
        num_digits = len(str(num_batches // 1))
        fmt = '{:' + str(num_digits) + 'd}'
        self.batch_fmtstr = '[' + fmt + '/' + fmt.format(num_batches) + ']'
        self.meters, self.prefix = meters, prefix

    def display(self, batch):
        entries = [self.prefix + self.batch_fmtstr.format(batch)]
        entries += [str(meter) for meter in self.meters]
        return '\t'.join(entries)


def accuracy(output, target, topk=(1,)):
    """Computes the accuracy over the k top predictions for the specified values of k"""
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


def train(train_loader, model, criterion, optimizer, epoch, device, log, losses_seen):
    batch_time = AverageMeter('Time', ':6.3f', Summary.NONE)
    losses = AverageMeter('Loss', ':.4e', Summary.NONE)
    top1 = AverageMeter('Acc@1', ':6.2f', Summary.NONE)
    top5 = AverageMeter('Acc@5', ':6.2f', Summary.NONE)
    progress = ProgressMeter(len(train_loader), [batch_time, losses, top1, top5],
                             prefix="Epoch: [{}]".format(epoch))
    model.train()
    end = time.time()
    for i, (images, target) in enumerate(train_loader):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        output = model(images)
        loss = criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        losses.update(loss.item(), images.size(0))
        top1.update(acc1[0], images.size(0))
        top5.update(acc5[0], images.size(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses_seen.append(loss.item())
        batch_time.update(time.time() - end)
        end = time.time()
        if i % 2 == 0:
            log.append(progress.display(i + 1))


def validate(val_loader, model, criterion, device):
    top1 = AverageMeter('Acc@1', ':6.2f', Summary.AVERAGE)
    top5 = AverageMeter('Acc@5', ':6.2f', Summary.AVERAGE)
    total = AverageMeter('Loss', ':.4e', Summary.AVERAGE)
    model.eval()
    with torch.no_grad():
        for images, target in val_loader:
            images, target = images.to(device), target.to(device)
            output = model(images)
            total.update(criterion(output, target).item(), images.size(0))
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            top1.update(acc1[0], images.size(0))
            top5.update(acc5[0], images.size(0))
    return float(top1.avg), float(top5.avg), total.avg


def save_checkpoint(state, is_best, directory, filename='checkpoint.pth.tar'):
    path = os.path.join(directory, filename)
    torch.save(state, path)
    if is_best:
        shutil.copyfile(path, os.path.join(directory, 'model_best.pth.tar'))


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    patterns = np.random.default_rng(11).standard_normal((10, 3, 16, 16))
    images = patterns[labels] + 0.8 * rng.standard_normal((n, 3, 16, 16))
    return torch.utils.data.TensorDataset(torch.tensor(images, dtype=torch.float32),
                                          torch.tensor(labels))


def main(seed=0, compile=False, initial_state=None, epochs=2):
    torch.manual_seed(seed)
    cudnn.deterministic = True
    cudnn.benchmark = False
    if torch.accelerator.is_available():
        device = torch.accelerator.current_accelerator()
    else:
        device = torch.device("cpu")
    model = ResNet().to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=1e-4)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.5)
    train_loader = torch.utils.data.DataLoader(make_data(64, 1), batch_size=16, shuffle=False)
    val_loader = torch.utils.data.DataLoader(Subset(make_data(48, 2), range(32)),
                                             batch_size=16, shuffle=False)
    directory = tempfile.mkdtemp()
    log, losses, best_acc1, results = [], [], 0, []
    for epoch in range(epochs):
        train(train_loader, model, criterion, optimizer, epoch, device, log, losses)
        acc1, acc5, val_loss = validate(val_loader, model, criterion, device)
        scheduler.step()
        is_best = acc1 > best_acc1
        best_acc1 = max(acc1, best_acc1)
        results.append((acc1, acc5, val_loss))
        save_checkpoint({'epoch': epoch + 1, 'arch': 'resnet_tiny',
                         'state_dict': model.state_dict(), 'best_acc1': torch.tensor(best_acc1),
                         'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict()},
                        is_best, directory)

    # --resume: a fresh model and optimizer from the best checkpoint
    checkpoint = torch.load(os.path.join(directory, 'model_best.pth.tar'), map_location=device)
    resumed = ResNet().to(device)
    resumed.load_state_dict(checkpoint['state_dict'])
    optimizer = torch.optim.SGD(resumed.parameters(), 0.05, momentum=0.9, weight_decay=1e-4)
    optimizer.load_state_dict(checkpoint['optimizer'])
    scheduler = StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler.load_state_dict(checkpoint['scheduler'])
    train(train_loader, resumed, criterion, optimizer, checkpoint['epoch'], device, log, losses)
    results.append(validate(val_loader, resumed, criterion, device))
    shutil.rmtree(directory)
    return {"losses": losses, "initial_state": initial, "results": results,
            "best_acc1": float(checkpoint['best_acc1']), "log_lines": len(log),
            "lr": optimizer.param_groups[0]['lr']}


if __name__ == "__main__":
    print(main())
