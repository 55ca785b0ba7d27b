"""ResNet-18/34/50/101/152, ResNeXt and Wide ResNet with torchvision's module names, so
torchvision's pretrained files load (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`)."""

from __future__ import annotations

from typing import Any, Callable

from kiln import Tensor, flatten, nn
from kiln.vision.models._weights import (Weights, WeightsEnum, _classification, _imagenet_meta,
                                         _load_weights, _ovewrite_named_param, register_model)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1,
            dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 dilation: int = 1, norm_layer: Callable[..., nn.Module] | None = None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided here, as torchvision's "ResNet V1.5"), 1x1 expand by 4."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 dilation: int = 1, norm_layer: Callable[..., nn.Module] | None = None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """The ResNet trunk: a 7x7/2 stem and max-pool, four stages of blocks, average pool, fc.
    Convolutions start from Kaiming-normal (fan_out), BatchNorms from (1, 0); with
    `zero_init_residual` each block's last BatchNorm starts at zero."""

    def __init__(self, block: type, layers: list[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: list[bool] | None = None,
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes = 64
        self.dilation = 1
        replace_stride_with_dilation = replace_stride_with_dilation or [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(f"replace_stride_with_dilation should be None or a 3-element "
                             f"tuple, got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2,
                                       dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2,
                                       dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2,
                                       dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups,
                        self.base_width, previous_dilation, norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups,
                                base_width=self.base_width, dilation=self.dilation,
                                norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = flatten(self.avgpool(x), 1)
        return self.fc(x)


_URL = "https://download.pytorch.org/models/"


def _v1(file: str, num_params: int) -> Weights:
    return Weights(_URL + file, _classification(224), _imagenet_meta(num_params, (1, 1)))


def _v2(file: str, num_params: int) -> Weights:
    return Weights(_URL + file, _classification(224, 232), _imagenet_meta(num_params, (1, 1)))


class ResNet18_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("resnet18-f37072fd.pth", 11689512)
    DEFAULT = IMAGENET1K_V1


class ResNet34_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("resnet34-b627a593.pth", 21797672)
    DEFAULT = IMAGENET1K_V1


class ResNet50_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("resnet50-0676ba61.pth", 25557032)
    IMAGENET1K_V2 = _v2("resnet50-11ad3fa6.pth", 25557032)
    DEFAULT = IMAGENET1K_V2


class ResNet101_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("resnet101-63fe2227.pth", 44549160)
    IMAGENET1K_V2 = _v2("resnet101-cd907fc2.pth", 44549160)
    DEFAULT = IMAGENET1K_V2


class ResNet152_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("resnet152-394f9c45.pth", 60192808)
    IMAGENET1K_V2 = _v2("resnet152-f82ba261.pth", 60192808)
    DEFAULT = IMAGENET1K_V2


class ResNeXt50_32X4D_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("resnext50_32x4d-7cdf4587.pth", 25028904)
    IMAGENET1K_V2 = _v2("resnext50_32x4d-1a0047aa.pth", 25028904)
    DEFAULT = IMAGENET1K_V2


class ResNeXt101_32X8D_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("resnext101_32x8d-8ba56ff5.pth", 88791336)
    IMAGENET1K_V2 = _v2("resnext101_32x8d-110c445d.pth", 88791336)
    DEFAULT = IMAGENET1K_V2


class ResNeXt101_64X4D_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v2("resnext101_64x4d-173b62eb.pth", 83455272)
    DEFAULT = IMAGENET1K_V1


class Wide_ResNet50_2_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("wide_resnet50_2-95faca4d.pth", 68883240)
    IMAGENET1K_V2 = _v2("wide_resnet50_2-9ba9bcbe.pth", 68883240)
    DEFAULT = IMAGENET1K_V2


class Wide_ResNet101_2_Weights(WeightsEnum):
    IMAGENET1K_V1 = _v1("wide_resnet101_2-32ee1156.pth", 126886696)
    IMAGENET1K_V2 = _v2("wide_resnet101_2-d733dc28.pth", 126886696)
    DEFAULT = IMAGENET1K_V2


def _resnet(block: type, layers: list[int], weights: WeightsEnum | None, progress: bool,
            kwargs: dict) -> ResNet:
    if weights is not None:
        _ovewrite_named_param(kwargs, "num_classes", len(weights.meta["categories"]))
    return _load_weights(ResNet(block, layers, **kwargs), weights, progress)


@register_model("resnet18", ResNet18_Weights)
def resnet18(*, weights: ResNet18_Weights | None = None, progress: bool = True,
             **kwargs: Any) -> ResNet:
    """ResNet-18; `weights` loads torchvision's pretrained file (through kiln.hub's cache)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], weights, progress, kwargs)


@register_model("resnet34", ResNet34_Weights)
def resnet34(*, weights: ResNet34_Weights | None = None, progress: bool = True,
             **kwargs: Any) -> ResNet:
    """ResNet-34."""
    return _resnet(BasicBlock, [3, 4, 6, 3], weights, progress, kwargs)


@register_model("resnet50", ResNet50_Weights)
def resnet50(*, weights: ResNet50_Weights | None = None, progress: bool = True,
             **kwargs: Any) -> ResNet:
    """ResNet-50."""
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, progress, kwargs)


@register_model("resnet101", ResNet101_Weights)
def resnet101(*, weights: ResNet101_Weights | None = None, progress: bool = True,
              **kwargs: Any) -> ResNet:
    """ResNet-101."""
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, progress, kwargs)


@register_model("resnet152", ResNet152_Weights)
def resnet152(*, weights: ResNet152_Weights | None = None, progress: bool = True,
              **kwargs: Any) -> ResNet:
    """ResNet-152."""
    return _resnet(Bottleneck, [3, 8, 36, 3], weights, progress, kwargs)


@register_model("resnext50_32x4d", ResNeXt50_32X4D_Weights)
def resnext50_32x4d(*, weights: ResNeXt50_32X4D_Weights | None = None, progress: bool = True,
                    **kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d: ResNet-50 with 32 groups of width 4 in each 3x3 convolution."""
    _ovewrite_named_param(kwargs, "groups", 32)
    _ovewrite_named_param(kwargs, "width_per_group", 4)
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, progress, kwargs)


@register_model("resnext101_32x8d", ResNeXt101_32X8D_Weights)
def resnext101_32x8d(*, weights: ResNeXt101_32X8D_Weights | None = None,
                     progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d."""
    _ovewrite_named_param(kwargs, "groups", 32)
    _ovewrite_named_param(kwargs, "width_per_group", 8)
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, progress, kwargs)


@register_model("resnext101_64x4d", ResNeXt101_64X4D_Weights)
def resnext101_64x4d(*, weights: ResNeXt101_64X4D_Weights | None = None,
                     progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d."""
    _ovewrite_named_param(kwargs, "groups", 64)
    _ovewrite_named_param(kwargs, "width_per_group", 4)
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, progress, kwargs)


@register_model("wide_resnet50_2", Wide_ResNet50_2_Weights)
def wide_resnet50_2(*, weights: Wide_ResNet50_2_Weights | None = None, progress: bool = True,
                    **kwargs: Any) -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with twice the channels inside each bottleneck."""
    _ovewrite_named_param(kwargs, "width_per_group", 64 * 2)
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, progress, kwargs)


@register_model("wide_resnet101_2", Wide_ResNet101_2_Weights)
def wide_resnet101_2(*, weights: Wide_ResNet101_2_Weights | None = None,
                     progress: bool = True, **kwargs: Any) -> ResNet:
    """Wide ResNet-101-2."""
    _ovewrite_named_param(kwargs, "width_per_group", 64 * 2)
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, progress, kwargs)
