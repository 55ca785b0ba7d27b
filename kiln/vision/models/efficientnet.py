"""EfficientNet-B0..B3 with torchvision's module names (`features.<stage>.<block>.block.<j>`,
`classifier.1`), so torchvision's pretrained files load."""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import Any, Callable, Sequence

from kiln import Tensor, flatten, nn
from kiln.vision.models._ops import (Conv2dNormActivation, SqueezeExcitation, StochasticDepth,
                                     _make_divisible, init_fan_out)
from kiln.vision.models._weights import (Weights, WeightsEnum, _classification, _imagenet_meta,
                                         _load_weights, _ovewrite_named_param, register_model)


class MBConvConfig:
    """One stage of Table 1 of the EfficientNet paper, widths and depth scaled."""

    def __init__(self, expand_ratio: float, kernel: int, stride: int, input_channels: int,
                 out_channels: int, num_layers: int, width_mult: float = 1.0,
                 depth_mult: float = 1.0) -> None:
        self.expand_ratio = expand_ratio
        self.kernel = kernel
        self.stride = stride
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.num_layers = self.adjust_depth(num_layers, depth_mult)
        self.block = MBConv

    @staticmethod
    def adjust_channels(channels: float, width_mult: float, min_value: int | None = None
                        ) -> int:
        return _make_divisible(channels * width_mult, 8, min_value)

    @staticmethod
    def adjust_depth(num_layers: int, depth_mult: float) -> int:
        return int(math.ceil(num_layers * depth_mult))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion (SiLU), depthwise convolution (SiLU),
    squeeze-excitation, linear 1x1 projection; a stochastic-depth shortcut when the shape is
    unchanged."""

    def __init__(self, cnf: MBConvConfig, stochastic_depth_prob: float,
                 norm_layer: Callable[..., nn.Module],
                 se_layer: Callable[..., nn.Module] = SqueezeExcitation) -> None:
        super().__init__()
        if not (1 <= cnf.stride <= 2):
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[nn.Module] = []
        activation_layer = nn.SiLU
        expanded = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        if expanded != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, expanded, kernel_size=1,
                                               norm_layer=norm_layer,
                                               activation_layer=activation_layer))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel_size=cnf.kernel,
                                           stride=cnf.stride, groups=expanded,
                                           norm_layer=norm_layer,
                                           activation_layer=activation_layer))
        squeeze_channels = max(1, cnf.input_channels // 4)
        layers.append(se_layer(expanded, squeeze_channels,
                               activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded, cnf.out_channels, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = cnf.out_channels

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + input
        return result


class EfficientNet(nn.Module):
    """A SiLU stem, the MBConv stages (stochastic depth growing linearly to
    `stochastic_depth_prob` over the blocks), a 1x1 to 4x the last width, global average pool,
    dropout, linear. Convolutions start Kaiming-normal (fan_out), linear weights uniform in
    +-1/sqrt(out_features)."""

    def __init__(self, inverted_residual_setting: Sequence[MBConvConfig], dropout: float,
                 stochastic_depth_prob: float = 0.2, num_classes: int = 1000,
                 norm_layer: Callable[..., nn.Module] | None = None,
                 last_channel: int | None = None) -> None:
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if not all(isinstance(s, MBConvConfig) for s in inverted_residual_setting):
            raise TypeError("The inverted_residual_setting should be List[MBConvConfig]")
        norm_layer = norm_layer or nn.BatchNorm2d
        layers: list[nn.Module] = [Conv2dNormActivation(
            3, inverted_residual_setting[0].input_channels, kernel_size=3, stride=2,
            norm_layer=norm_layer, activation_layer=nn.SiLU)]
        total_stage_blocks = sum(cnf.num_layers for cnf in inverted_residual_setting)
        stage_block_id = 0
        for cnf in inverted_residual_setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if stage:             # later blocks of a stage keep the width and resolution
                    block_cnf.input_channels = block_cnf.out_channels
                    block_cnf.stride = 1
                sd_prob = stochastic_depth_prob * float(stage_block_id) / total_stage_blocks
                stage.append(block_cnf.block(block_cnf, sd_prob, norm_layer))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = inverted_residual_setting[-1].out_channels
        last_out = last_channel if last_channel is not None else 4 * last_in
        layers.append(Conv2dNormActivation(last_in, last_out, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(last_out, num_classes))
        init_fan_out(self, lambda w: nn.init.uniform_(w, -1.0 / math.sqrt(w.shape[0]),
                                                  1.0 / math.sqrt(w.shape[0])))

    def forward(self, x: Tensor) -> Tensor:
        x = flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _efficientnet_conf(width_mult: float, depth_mult: float) -> list[MBConvConfig]:
    bneck_conf = partial(MBConvConfig, width_mult=width_mult, depth_mult=depth_mult)
    return [bneck_conf(1, 3, 1, 32, 16, 1), bneck_conf(6, 3, 2, 16, 24, 2),
            bneck_conf(6, 5, 2, 24, 40, 2), bneck_conf(6, 3, 2, 40, 80, 3),
            bneck_conf(6, 5, 1, 80, 112, 3), bneck_conf(6, 5, 2, 112, 192, 4),
            bneck_conf(6, 3, 1, 192, 320, 1)]


_URL = "https://download.pytorch.org/models/"


def _w(file: str, num_params: int, crop: int, resize: int, bicubic: bool = True) -> Weights:
    return Weights(_URL + file, _classification(crop, resize, bicubic=bicubic),
                   _imagenet_meta(num_params, (1, 1)))


class EfficientNet_B0_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b0_rwightman-7f5810bc.pth", 5288548, 224, 256)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B1_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b1_rwightman-bac287d4.pth", 7794184, 240, 256)
    IMAGENET1K_V2 = _w("efficientnet_b1-c27df63c.pth", 7794184, 240, 255, bicubic=False)
    DEFAULT = IMAGENET1K_V2


class EfficientNet_B2_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b2_rwightman-c35c1473.pth", 9109994, 288, 288)
    DEFAULT = IMAGENET1K_V1


class EfficientNet_B3_Weights(WeightsEnum):
    IMAGENET1K_V1 = _w("efficientnet_b3_rwightman-b3899882.pth", 12233232, 300, 320)
    DEFAULT = IMAGENET1K_V1


def _efficientnet(width_mult: float, depth_mult: float, dropout: float,
                  weights: WeightsEnum | None, progress: bool, kwargs: dict) -> EfficientNet:
    if weights is not None:
        _ovewrite_named_param(kwargs, "num_classes", len(weights.meta["categories"]))
    setting = _efficientnet_conf(width_mult, depth_mult)
    model = EfficientNet(setting, kwargs.pop("dropout", dropout), **kwargs)
    return _load_weights(model, weights, progress)


@register_model("efficientnet_b0", EfficientNet_B0_Weights)
def efficientnet_b0(*, weights: EfficientNet_B0_Weights | None = None, progress: bool = True,
                    **kwargs: Any) -> EfficientNet:
    """EfficientNet-B0."""
    return _efficientnet(1.0, 1.0, 0.2, weights, progress, kwargs)


@register_model("efficientnet_b1", EfficientNet_B1_Weights)
def efficientnet_b1(*, weights: EfficientNet_B1_Weights | None = None, progress: bool = True,
                    **kwargs: Any) -> EfficientNet:
    """EfficientNet-B1."""
    return _efficientnet(1.0, 1.1, 0.2, weights, progress, kwargs)


@register_model("efficientnet_b2", EfficientNet_B2_Weights)
def efficientnet_b2(*, weights: EfficientNet_B2_Weights | None = None, progress: bool = True,
                    **kwargs: Any) -> EfficientNet:
    """EfficientNet-B2."""
    return _efficientnet(1.1, 1.2, 0.3, weights, progress, kwargs)


@register_model("efficientnet_b3", EfficientNet_B3_Weights)
def efficientnet_b3(*, weights: EfficientNet_B3_Weights | None = None, progress: bool = True,
                    **kwargs: Any) -> EfficientNet:
    """EfficientNet-B3."""
    return _efficientnet(1.2, 1.4, 0.3, weights, progress, kwargs)
