"""ShuffleNetV2 (x0.5, x1.0, x1.5, x2.0) with torchvision's module names (`conv1`,
`stage2.0.branch1.0`, ..., `fc`), so torchvision's pretrained files load."""

from __future__ import annotations

from typing import Any

import kiln
from kiln import Tensor, nn
from kiln.vision.models._weights import (Weights, WeightsEnum, _classification, _imagenet_meta,
                                         _load_weights, _ovewrite_named_param, register_model)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of `groups` groups (so the two branches exchange features)."""
    batchsize, num_channels, height, width = x.shape
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = x.transpose(1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class InvertedResidual(nn.Module):
    """Stride 1: half the channels pass, the other half go through 1x1, depthwise 3x3, 1x1.
    Stride 2: both halves are computed from all the input (branch1 and branch2). Then the
    channels are shuffled."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if not (1 <= stride <= 3):
            raise ValueError("illegal stride value")
        self.stride = stride
        branch_features = oup // 2
        if (self.stride == 1) and (inp != branch_features << 1):
            raise ValueError(f"Invalid combination of stride {stride}, inp {inp} and oup {oup} "
                             f"values. If stride == 1 then inp should be equal to oup // 2 << 1.")
        if self.stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp, kernel_size=3, stride=self.stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if (self.stride > 1) else branch_features, branch_features,
                      kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True),
            self.depthwise_conv(branch_features, branch_features, kernel_size=3,
                                stride=self.stride, padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0,
                      bias=False),
            nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True))

    @staticmethod
    def depthwise_conv(i: int, o: int, kernel_size: int, stride: int = 1, padding: int = 0,
                       bias: bool = False) -> nn.Conv2d:
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = kiln.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = kiln.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """A 3x3/2 stem and max-pool, three stages of shuffle blocks, a 1x1 convolution, global
    mean and a linear classifier (PyTorch's default initialization throughout)."""

    def __init__(self, stages_repeats: list[int], stages_out_channels: list[int],
                 num_classes: int = 1000, inverted_residual: type = InvertedResidual) -> None:
        super().__init__()
        if len(stages_repeats) != 3:
            raise ValueError("expected stages_repeats as list of 3 positive ints")
        if len(stages_out_channels) != 5:
            raise ValueError("expected stages_out_channels as list of 5 positive ints")
        self._stage_out_channels = stages_out_channels
        input_channels = 3
        output_channels = self._stage_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(output_channels), nn.ReLU(inplace=True))
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, repeats, output_channels in zip(("stage2", "stage3", "stage4"),
                                                  stages_repeats,
                                                  self._stage_out_channels[1:]):
            seq = [inverted_residual(input_channels, output_channels, 2)]
            seq += [inverted_residual(output_channels, output_channels, 1)
                    for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*seq))
            input_channels = output_channels
        output_channels = self._stage_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels), nn.ReLU(inplace=True))
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean([2, 3])
        return self.fc(x)


_URL = "https://download.pytorch.org/models/"


class ShuffleNet_V2_X0_5_Weights(WeightsEnum):
    IMAGENET1K_V1 = Weights(_URL + "shufflenetv2_x0.5-f707e7126e.pth", _classification(224),
                            _imagenet_meta(1366792, (1, 1)))
    DEFAULT = IMAGENET1K_V1


class ShuffleNet_V2_X1_0_Weights(WeightsEnum):
    IMAGENET1K_V1 = Weights(_URL + "shufflenetv2_x1-5666bf0f80.pth", _classification(224),
                            _imagenet_meta(2278604, (1, 1)))
    DEFAULT = IMAGENET1K_V1


class ShuffleNet_V2_X1_5_Weights(WeightsEnum):
    IMAGENET1K_V1 = Weights(_URL + "shufflenetv2_x1_5-3c479a10.pth",
                            _classification(224, 232), _imagenet_meta(3503624, (1, 1)))
    DEFAULT = IMAGENET1K_V1


class ShuffleNet_V2_X2_0_Weights(WeightsEnum):
    IMAGENET1K_V1 = Weights(_URL + "shufflenetv2_x2_0-8be3c8ee.pth",
                            _classification(224, 232), _imagenet_meta(7393996, (1, 1)))
    DEFAULT = IMAGENET1K_V1


def _shufflenetv2(repeats: list[int], channels: list[int], weights: WeightsEnum | None,
                  progress: bool, kwargs: dict) -> ShuffleNetV2:
    if weights is not None:
        _ovewrite_named_param(kwargs, "num_classes", len(weights.meta["categories"]))
    return _load_weights(ShuffleNetV2(repeats, channels, **kwargs), weights, progress)


@register_model("shufflenet_v2_x0_5", ShuffleNet_V2_X0_5_Weights)
def shufflenet_v2_x0_5(*, weights: ShuffleNet_V2_X0_5_Weights | None = None,
                       progress: bool = True, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 with 0.5x output channels."""
    return _shufflenetv2([4, 8, 4], [24, 48, 96, 192, 1024], weights, progress, kwargs)


@register_model("shufflenet_v2_x1_0", ShuffleNet_V2_X1_0_Weights)
def shufflenet_v2_x1_0(*, weights: ShuffleNet_V2_X1_0_Weights | None = None,
                       progress: bool = True, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 with 1.0x output channels."""
    return _shufflenetv2([4, 8, 4], [24, 116, 232, 464, 1024], weights, progress, kwargs)


@register_model("shufflenet_v2_x1_5", ShuffleNet_V2_X1_5_Weights)
def shufflenet_v2_x1_5(*, weights: ShuffleNet_V2_X1_5_Weights | None = None,
                       progress: bool = True, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 with 1.5x output channels."""
    return _shufflenetv2([4, 8, 4], [24, 176, 352, 704, 1024], weights, progress, kwargs)


@register_model("shufflenet_v2_x2_0", ShuffleNet_V2_X2_0_Weights)
def shufflenet_v2_x2_0(*, weights: ShuffleNet_V2_X2_0_Weights | None = None,
                       progress: bool = True, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 with 2.0x output channels."""
    return _shufflenetv2([4, 8, 4], [24, 244, 488, 976, 2048], weights, progress, kwargs)
