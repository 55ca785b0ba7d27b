"""VGG-11/13/16/19 (with and without BatchNorm) with torchvision's module names
(`features.<i>`, `classifier.<i>`), so torchvision's pretrained files load."""

from __future__ import annotations

from functools import partial
from typing import Any

from kiln import Tensor, flatten, nn
from kiln.vision.models._weights import (Weights, WeightsEnum, _classification, _imagenet_meta,
                                         _load_weights, _ovewrite_named_param, register_model)
from kiln.vision.transforms._presets import ImageClassification


class VGG(nn.Module):
    """`features` (3x3 convolutions and max-pools), a 7x7 adaptive average pool, and three
    linear layers with dropout. Convolutions start Kaiming-normal (fan_out), linear weights
    from N(0, 0.01), biases at zero."""

    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def make_layers(cfg: list, batch_norm: bool = False) -> nn.Sequential:
    """The convolutional trunk from a configuration: numbers are 3x3 convolutions' widths
    (each followed by BatchNorm when asked, and ReLU), "M" a 2x2 max-pool."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            if batch_norm:
                layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


cfgs: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
          "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
          512, 512, 512, "M"],
}


def _w(file: str, num_params: int) -> Weights:
    return Weights("https://download.pytorch.org/models/" + file, _classification(224),
                   _imagenet_meta(num_params, (32, 32)))


class VGG11_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("vgg11-8a719046.pth", 132863336)
    DEFAULT = IMAGENET1K_V1


class VGG11_BN_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("vgg11_bn-6002323d.pth", 132868840)
    DEFAULT = IMAGENET1K_V1


class VGG13_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("vgg13-19584684.pth", 133047848)
    DEFAULT = IMAGENET1K_V1


class VGG13_BN_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("vgg13_bn-abd245e5.pth", 133053736)
    DEFAULT = IMAGENET1K_V1


class VGG16_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("vgg16-397923af.pth", 138357544)
    # The trunk ported from the original Caffe model for SSD: no classifier categories, and
    # inputs in [0, 255] less the mean (the std of 1/255 undoes the scaling to [0, 1]).
    IMAGENET1K_FEATURES = Weights(
        "https://download.pytorch.org/models/vgg16_features-amdegroot-88682ab5.pth",
        partial(ImageClassification, crop_size=224, mean=(0.48235, 0.45882, 0.40784),
                std=(1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)),
        {"num_params": 138357544, "min_size": (32, 32), "categories": None})
    DEFAULT = IMAGENET1K_V1


class VGG16_BN_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("vgg16_bn-6c64b313.pth", 138365992)
    DEFAULT = IMAGENET1K_V1


class VGG19_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("vgg19-dcbb9e9d.pth", 143667240)
    DEFAULT = IMAGENET1K_V1


class VGG19_BN_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("vgg19_bn-c79401a0.pth", 143678248)
    DEFAULT = IMAGENET1K_V1


def _vgg(cfg: str, batch_norm: bool, weights: WeightsEnum | None, progress: bool,
         kwargs: dict) -> VGG:
    if weights is not None:
        kwargs["init_weights"] = False
        if weights.meta["categories"] is not None:
            _ovewrite_named_param(kwargs, "num_classes", len(weights.meta["categories"]))
    model = VGG(make_layers(cfgs[cfg], batch_norm=batch_norm), **kwargs)
    return _load_weights(model, weights, progress)


@register_model("vgg11", VGG11_Weights)
def vgg11(*, weights: VGG11_Weights | None = None, progress: bool = True,
          **kwargs: Any) -> VGG:
    """VGG-11 (configuration "A")."""
    return _vgg("A", False, weights, progress, kwargs)


@register_model("vgg11_bn", VGG11_BN_Weights)
def vgg11_bn(*, weights: VGG11_BN_Weights | None = None, progress: bool = True,
             **kwargs: Any) -> VGG:
    """VGG-11 with BatchNorm."""
    return _vgg("A", True, weights, progress, kwargs)


@register_model("vgg13", VGG13_Weights)
def vgg13(*, weights: VGG13_Weights | None = None, progress: bool = True,
          **kwargs: Any) -> VGG:
    """VGG-13 (configuration "B")."""
    return _vgg("B", False, weights, progress, kwargs)


@register_model("vgg13_bn", VGG13_BN_Weights)
def vgg13_bn(*, weights: VGG13_BN_Weights | None = None, progress: bool = True,
             **kwargs: Any) -> VGG:
    """VGG-13 with BatchNorm."""
    return _vgg("B", True, weights, progress, kwargs)


@register_model("vgg16", VGG16_Weights)
def vgg16(*, weights: VGG16_Weights | None = None, progress: bool = True,
          **kwargs: Any) -> VGG:
    """VGG-16 (configuration "D")."""
    return _vgg("D", False, weights, progress, kwargs)


@register_model("vgg16_bn", VGG16_BN_Weights)
def vgg16_bn(*, weights: VGG16_BN_Weights | None = None, progress: bool = True,
             **kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm."""
    return _vgg("D", True, weights, progress, kwargs)


@register_model("vgg19", VGG19_Weights)
def vgg19(*, weights: VGG19_Weights | None = None, progress: bool = True,
          **kwargs: Any) -> VGG:
    """VGG-19 (configuration "E")."""
    return _vgg("E", False, weights, progress, kwargs)


@register_model("vgg19_bn", VGG19_BN_Weights)
def vgg19_bn(*, weights: VGG19_BN_Weights | None = None, progress: bool = True,
             **kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm."""
    return _vgg("E", True, weights, progress, kwargs)
