"""DenseNet-121/161/169/201 with torchvision's module names (`features.denseblock1.denselayer1.
norm1`, ...), so torchvision's pretrained files load (their old `norm.1`-style keys are
renamed on load, as torchvision does)."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import kiln
from kiln import Tensor, flatten, nn
from kiln.nn import functional as F
from kiln.vision.models._weights import (Weights, WeightsEnum, _classification, _imagenet_meta,
                                         _load_weights, _ovewrite_named_param, register_model)


class _DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to bn_size * growth_rate, BN-ReLU-3x3 conv to growth_rate, on the
    concatenation of all earlier features."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int,
                 drop_rate: float, memory_efficient: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1,
                               stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1,
                               padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        # torchvision's memory_efficient recomputes the 1x1 under checkpointing; the values
        # are the same, so kiln accepts the flag and computes directly.
        self.memory_efficient = memory_efficient

    def forward(self, input: Tensor | list[Tensor]) -> Tensor:
        prev = [input] if isinstance(input, Tensor) else input
        bottleneck = self.conv1(self.relu1(self.norm1(kiln.cat(prev, 1))))
        new_features = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    _version = 2

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int,
                 growth_rate: int, drop_rate: float, memory_efficient: bool = False) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate=growth_rate,
                                bn_size=bn_size, drop_rate=drop_rate,
                                memory_efficient=memory_efficient)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for _, layer in self.items():
            features.append(layer(features))
        return kiln.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1,
                              bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """A 7x7/2 stem and max-pool, dense blocks joined by transitions (1x1 conv halving the
    channels, 2x2 average pool), a last BatchNorm, ReLU, global average pool and a linear
    classifier. Convolutions start Kaiming-normal (fan_in), linear biases at zero."""

    def __init__(self, growth_rate: int = 32, block_config: tuple[int, ...] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0,
                 num_classes: int = 1000, memory_efficient: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3,
                                bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers=num_layers, num_input_features=num_features,
                                bn_size=bn_size, growth_rate=growth_rate, drop_rate=drop_rate,
                                memory_efficient=memory_efficient)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_features, num_features // 2)
                self.features.add_module(f"transition{i + 1}", trans)
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x), inplace=True)
        out = flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


# The published files predate the `norm1` names: `...denselayer1.norm.1.weight`.
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
    r"running_var))$")


def _rename_old_keys(state_dict: dict) -> dict:
    renamed = OrderedDict()
    for key, value in state_dict.items():
        found = _OLD_KEY.match(key)
        renamed[found.group(1) + found.group(2) if found else key] = value
    return renamed


def _w(file: str, num_params: int) -> Weights:
    return Weights("https://download.pytorch.org/models/" + file, _classification(224),
                   _imagenet_meta(num_params, (29, 29)))


class DenseNet121_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("densenet121-a639ec97.pth", 7978856)
    DEFAULT = IMAGENET1K_V1


class DenseNet161_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("densenet161-8d451a50.pth", 28681000)
    DEFAULT = IMAGENET1K_V1


class DenseNet169_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("densenet169-b2777c0a.pth", 14149480)
    DEFAULT = IMAGENET1K_V1


class DenseNet201_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("densenet201-c1103571.pth", 20013928)
    DEFAULT = IMAGENET1K_V1


def _densenet(growth_rate: int, block_config: tuple[int, ...], num_init_features: int,
              weights: WeightsEnum | None, progress: bool, kwargs: dict) -> DenseNet:
    if weights is not None:
        _ovewrite_named_param(kwargs, "num_classes", len(weights.meta["categories"]))
    model = DenseNet(growth_rate, block_config, num_init_features, **kwargs)
    return _load_weights(model, weights, progress, rename=_rename_old_keys)


@register_model("densenet121", DenseNet121_Weights)
def densenet121(*, weights: DenseNet121_Weights | None = None, progress: bool = True,
                **kwargs: Any) -> DenseNet:
    """DenseNet-121."""
    return _densenet(32, (6, 12, 24, 16), 64, weights, progress, kwargs)


@register_model("densenet161", DenseNet161_Weights)
def densenet161(*, weights: DenseNet161_Weights | None = None, progress: bool = True,
                **kwargs: Any) -> DenseNet:
    """DenseNet-161."""
    return _densenet(48, (6, 12, 36, 24), 96, weights, progress, kwargs)


@register_model("densenet169", DenseNet169_Weights)
def densenet169(*, weights: DenseNet169_Weights | None = None, progress: bool = True,
                **kwargs: Any) -> DenseNet:
    """DenseNet-169."""
    return _densenet(32, (6, 12, 32, 32), 64, weights, progress, kwargs)


@register_model("densenet201", DenseNet201_Weights)
def densenet201(*, weights: DenseNet201_Weights | None = None, progress: bool = True,
                **kwargs: Any) -> DenseNet:
    """DenseNet-201."""
    return _densenet(32, (6, 12, 48, 32), 64, weights, progress, kwargs)
