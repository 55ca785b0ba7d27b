"""kiln.vision.models against torchvision's architectures rebuilt in torch: the same state_dict
keys and shapes (so torchvision checkpoints load), and the same outputs from the same weights."""

import numpy as np
import torch
import torch.nn as tnn

import kiln
from kiln.vision import models


# ---------------------------------------------------------------- torchvision's layout in torch

class TorchBasic(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(tnn.Module):
    def __init__(self, block, layers, num_classes):
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            setattr(self, f"layer{i + 1}", self._stage(block, planes, n, 1 if i == 0 else 2))
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)

    def _stage(self, block, planes, n, stride):
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = tnn.Sequential(tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                                             bias=False), tnn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, n)]
        return tnn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_alexnet(num_classes):
    features = tnn.Sequential(
        tnn.Conv2d(3, 64, 11, 4, 2), tnn.ReLU(True), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(64, 192, 5, padding=2), tnn.ReLU(True), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(192, 384, 3, padding=1), tnn.ReLU(True),
        tnn.Conv2d(384, 256, 3, padding=1), tnn.ReLU(True),
        tnn.Conv2d(256, 256, 3, padding=1), tnn.ReLU(True), tnn.MaxPool2d(3, 2))
    classifier = tnn.Sequential(tnn.Dropout(), tnn.Linear(9216, 4096), tnn.ReLU(True),
                                tnn.Dropout(), tnn.Linear(4096, 4096), tnn.ReLU(True),
                                tnn.Linear(4096, num_classes))
    model = tnn.Module()
    model.features, model.avgpool, model.classifier = features, tnn.AdaptiveAvgPool2d(6), \
        classifier
    model.forward = lambda x: classifier(torch.flatten(model.avgpool(features(x)), 1))
    return model


# ---------------------------------------------------------------- helpers

def shapes(state):
    return [(k, tuple(v.shape)) for k, v in state.items()]


def copy_into_torch(kiln_model, torch_model):
    state = {k: torch.from_numpy(v.numpy().copy()) for k, v in kiln_model.state_dict().items()}
    torch_model.load_state_dict(state)


def test_resnet18_matches_torchvision_layout_outputs_and_gradients():
    kiln.manual_seed(0)
    model = models.resnet18(num_classes=7)
    reference = TorchResNet(TorchBasic, [2, 2, 2, 2], 7)
    assert shapes(model.state_dict()) == shapes(reference.state_dict())
    copy_into_torch(model, reference)
    x = np.random.default_rng(0).normal(size=(2, 3, 40, 40)).astype(np.float32)
    model.eval()
    reference.eval()
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(kiln.tensor(x)).detach().numpy(), expected, rtol=1e-4,
                               atol=1e-4)
    model.train()
    reference.train()
    out = model(kiln.tensor(x))
    out.square().mean().backward()
    t_out = reference(torch.from_numpy(x))
    t_out.square().mean().backward()
    np.testing.assert_allclose(out.detach().numpy(), t_out.detach().numpy(), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(model.conv1.weight.grad.numpy(),
                               reference.conv1.weight.grad.numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(model.layer1[0].bn1.running_mean.numpy(),
                               reference.layer1[0].bn1.running_mean.numpy(), rtol=1e-4,
                               atol=1e-6)


def test_bottleneck_resnet_matches_torchvision_outputs():
    """ResNet-50's block (1x1, strided 3x3, 1x1 x4, projection shortcut), one per stage. The
    train-mode comparison stops at the outputs and the fc gradient: through BatchNorms over
    2x2 maps, torch's own float32 conv1 gradient is 1-2% from its float64 one."""
    kiln.manual_seed(3)
    model = models.ResNet(models.Bottleneck, [1, 1, 1, 1], num_classes=5)
    reference = TorchResNet(TorchBottleneck, [1, 1, 1, 1], 5)
    assert shapes(model.state_dict()) == shapes(reference.state_dict())
    copy_into_torch(model, reference)
    x = np.random.default_rng(2).normal(size=(2, 3, 36, 36)).astype(np.float32)
    for train in (False, True):
        model.train(train)
        reference.train(train)
        out = model(kiln.tensor(x))
        t_out = reference(torch.from_numpy(x))
        np.testing.assert_allclose(out.detach().numpy(), t_out.detach().numpy(), rtol=1e-4,
                                   atol=1e-4)
    out.square().mean().backward()
    t_out.square().mean().backward()
    np.testing.assert_allclose(model.fc.weight.grad.numpy(), reference.fc.weight.grad.numpy(),
                               rtol=1e-4, atol=1e-6)


def test_resnet50_names_and_initialization():
    kiln.manual_seed(1)
    model = models.resnet50(zero_init_residual=True)
    state = model.state_dict()
    reference = TorchResNet(TorchBottleneck, [3, 4, 6, 3], 1000)
    assert shapes(state) == shapes(reference.state_dict())
    for key in ("layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
                "layer4.2.bn3.num_batches_tracked", "fc.bias"):
        assert key in state
    w = model.layer4[1].conv2.weight.detach().numpy()          # Kaiming normal, fan_out
    assert abs(w.std() / np.sqrt(2.0 / (512 * 9)) - 1) < 0.03 and abs(w.mean()) < 1e-3
    assert (model.bn1.weight.detach().numpy() == 1).all()
    assert (model.bn1.bias.detach().numpy() == 0).all()
    assert (model.layer3[2].bn3.weight.detach().numpy() == 0).all()   # zero_init_residual
    assert (model.layer3[2].bn2.weight.detach().numpy() == 1).all()
    fc = model.fc.weight.detach().numpy()                        # nn.Linear's default init
    assert np.abs(fc).max() <= 1 / np.sqrt(2048) and fc.std() > 0.8 / np.sqrt(3 * 2048)


def test_resnet_builders_pass_torchvision_configurations(monkeypatch):
    from kiln.vision.models import resnet
    monkeypatch.setattr(resnet, "ResNet", lambda block, layers, **kwargs: (block, layers, kwargs))
    assert models.resnet18(num_classes=3) == (resnet.BasicBlock, [2, 2, 2, 2], {"num_classes": 3})
    assert models.resnet34() == (resnet.BasicBlock, [3, 4, 6, 3], {})
    assert models.resnet50(pretrained=False) == (resnet.Bottleneck, [3, 4, 6, 3], {})
    assert models.resnet101()[1] == [3, 4, 23, 3] and models.resnet152()[1] == [3, 8, 36, 3]


def test_alexnet_matches_torchvision_layout_and_outputs():
    kiln.manual_seed(2)
    model = models.alexnet(num_classes=5)
    reference = torch_alexnet(5)
    assert shapes(model.state_dict()) == shapes(reference.state_dict())
    copy_into_torch(model, reference)
    model.eval()
    reference.eval()
    x = np.random.default_rng(1).normal(size=(1, 3, 67, 67)).astype(np.float32)
    with torch.no_grad():
        expected = reference.forward(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(kiln.tensor(x)).detach().numpy(), expected, rtol=1e-4,
                               atol=1e-5)
