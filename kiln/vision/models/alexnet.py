"""AlexNet with torchvision's module names (`features.*`, `classifier.*`)."""

from __future__ import annotations

from typing import Any

from kiln import Tensor, flatten, nn
from kiln.vision.models._weights import (Weights, WeightsEnum, _classification, _imagenet_meta,
                                         _load_weights, _ovewrite_named_param, register_model)


class AlexNet(nn.Module):
    """Five convolutions with max-pools, a 6x6 adaptive average pool, three linear layers."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


class AlexNet_Weights(WeightsEnum):
    IMAGENET1K_V1 = Weights("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                            _classification(224), _imagenet_meta(61100840, (63, 63)))
    DEFAULT = IMAGENET1K_V1


@register_model("alexnet", AlexNet_Weights)
def alexnet(*, weights: AlexNet_Weights | None = None, progress: bool = True,
            **kwargs: Any) -> AlexNet:
    """AlexNet; `weights` loads torchvision's pretrained file (through kiln.hub's cache)."""
    if weights is not None:
        _ovewrite_named_param(kwargs, "num_classes", len(weights.meta["categories"]))
    return _load_weights(AlexNet(**kwargs), weights, progress)
